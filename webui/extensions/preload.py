"""Extension command-line flags: each enabled extension's `preload.py` may define `preload(parser)`, which
adds arguments before the command line is parsed.

This runs before the settings service and logging exist, so the data folder and the disabled list are read
here directly. A preload.py that raises (or calls sys.exit) is reported with its traceback and skipped; the
app starts anyway.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..engine.paths import BUILTIN_EXTENSIONS_DIR, REPO_ROOT
from .registry import Extension, discover_extensions

log = logging.getLogger(__name__)

ERRORS_ATTRIBUTE = "extension_preload_errors"   # set on the parsed args: list[PreloadError]


@dataclass(frozen=True)
class PreloadError:
    extension: str
    where: str          # the preload.py path
    message: str
    traceback: str


def data_dir_from_argv(argv: list[str]) -> Path:
    """The --data-dir the full parser will see, found without knowing the other flags."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--data-dir", type=Path)
    try:
        known, _ = pre.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return REPO_ROOT
    return Path(known.data_dir).resolve() if known.data_dir else REPO_ROOT


def read_disabled(config_file: Path) -> set[str]:
    """`disabled_extensions` from config.json; an unreadable file counts as none disabled (Settings reports it)."""
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    value = data.get("disabled_extensions") if isinstance(data, dict) else None
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def run_preload(parser: argparse.ArgumentParser, ext: Extension) -> PreloadError | None:
    script = ext.file("preload.py")
    if script is None:
        return None
    module_name = "extension_preload_" + re.sub(r"\W", "_", ext.name)
    try:
        spec = importlib.util.spec_from_file_location(module_name, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        preload = getattr(module, "preload", None)
        if callable(preload):
            preload(parser)
    except (Exception, SystemExit) as exc:
        error = PreloadError(ext.name, str(script), f"{type(exc).__name__}: {exc}", traceback.format_exc())
        log.error("extension %s: preload.py failed, its flags are not available:\n%s", ext.name, error.traceback)
        return error
    return None


def preload_extensions(parser: argparse.ArgumentParser, extensions: list[Extension]) -> list[PreloadError]:
    errors = [run_preload(parser, ext) for ext in extensions if ext.enabled]
    return [e for e in errors if e is not None]


def add_extension_flags(parser: argparse.ArgumentParser, argv: list[str],
                        builtin_dir: Path = BUILTIN_EXTENSIONS_DIR) -> list[PreloadError]:
    """Run the preload.py of every enabled extension (built-in, then DATA/extensions) against `parser`.

    The errors are also stored as the parsed args' `extension_preload_errors`, for the UI.
    """
    data_dir = data_dir_from_argv(argv)
    disabled = read_disabled(data_dir / "config.json")
    extensions = discover_extensions([builtin_dir, data_dir / "extensions"], disabled, builtin_dirs=[builtin_dir])
    errors = preload_extensions(parser, extensions)
    parser.set_defaults(**{ERRORS_ATTRIBUTE: errors})
    return errors
