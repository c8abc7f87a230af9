"""A1111's `modules.paths`: the same names as `modules.paths_internal`."""
from __future__ import annotations

from . import paths_internal
from .paths_internal import extensions_builtin_dir, script_path  # noqa: F401


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(paths_internal, name)
