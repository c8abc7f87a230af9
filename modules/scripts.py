"""A1111's `modules.scripts`: the Script base class and friends, from the hook API."""
from __future__ import annotations

from pathlib import Path

from webui.engine.paths import REPO_ROOT
from webui.extensions_api import AlwaysVisible, PostprocessBatchListArgs, PostprocessImageArgs, Script, extension_dir

from . import _bridge

# scripts_txt2img / scripts_img2img are looked up lazily (module __getattr__), so not in __all__
__all__ = ["Script", "AlwaysVisible", "PostprocessImageArgs", "PostprocessBatchListArgs", "basedir"]


def basedir() -> str:
    """The folder of the extension whose script is running (A1111: the repo root outside extension code)."""
    _bridge.app_or_none()   # remember the App for calls made later outside extension code
    try:
        folder = extension_dir()
    except RuntimeError:
        folder = None
    return str(folder if folder is not None else Path(REPO_ROOT))


def __getattr__(name: str):
    # A1111's script runners (scripts.scripts_txt2img.alwayson_scripts, …) are the host's runners here
    if name in ("scripts_txt2img", "scripts_img2img"):
        return _bridge.host().runner("txt2img" if name == "scripts_txt2img" else "img2img")
    raise AttributeError(f"module 'modules.scripts' has no attribute {name!r} (not supported by this app)")
