"""A1111's `modules.paths_internal`: script_path, data_path, models_path, extensions_dir, extensions_builtin_dir
(strings, from the running App's data folders)."""
from __future__ import annotations

from webui.engine.paths import BUILTIN_EXTENSIONS_DIR, REPO_ROOT

from . import _bridge

script_path = str(REPO_ROOT)
extensions_builtin_dir = str(BUILTIN_EXTENSIONS_DIR)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    paths = _bridge.app().engine.paths
    if name == "data_path":
        return str(paths.data_dir)
    if name == "models_path":
        return str(paths.data_dir / "models")
    if name == "extensions_dir":
        return str(paths.extensions_dir)
    raise AttributeError(f"module 'modules.paths_internal' has no attribute {name!r} (not supported by this app)")
