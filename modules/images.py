"""A1111's `modules.images`: save_image (with the image-saved callbacks), grids, reading infotext."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from webui.engine import grids
from webui.engine.infotext import read_image_infotext, save_image_with_infotext
from webui.services.storage import FORMATS, next_sequence_number

from . import _bridge

__all__ = ["save_image", "image_grid", "GridAnnotation", "draw_grid_annotations", "read_info_from_image"]


def save_image(image: Image.Image, path: str, basename: str = "", seed: int | None = None, prompt: str | None = None,
               extension: str = "png", info: str | None = None, short_filename: bool = False,
               no_prompt: bool = False, grid: bool = False, pnginfo_section_name: str = "parameters",
               p: Any = None, existing_info: dict | None = None, forced_filename: str | None = None,
               suffix: str = "", save_to_dirs: bool | None = None) -> tuple[str, None]:
    """Save into `path` as NNNNN[-basename][-seed][suffix].ext (or forced_filename.ext), with `info` embedded
    (PNG `parameters` / EXIF), running the before_image_saved / image_saved callbacks. Returns (file, None):
    this app writes no .txt sidecars."""
    extension = extension.lower().lstrip(".")
    if extension not in FORMATS:
        raise ValueError(f"unsupported image extension: {extension!r}; use one of {', '.join(FORMATS)}")
    app = _bridge.app()
    folder = Path(path) if path else app.storage.folder("txt2img")
    folder.mkdir(parents=True, exist_ok=True)
    if forced_filename:
        stem = forced_filename
    else:
        parts = [f"{next_sequence_number(folder):05}"] + ([basename] if basename else []) + \
                ([str(seed)] if seed is not None else [])
        stem = "-".join(parts)
    target = folder / f"{stem}{suffix}.{extension}"
    keep_info = app.settings.get("enable_pnginfo")
    host = app.extensions
    params = host.before_image_saved(image, p, info if keep_info else None)
    save_image_with_infotext(params.image, target, params.pnginfo.get("parameters"), format=FORMATS[extension])
    params.filename = str(target)
    host.image_saved(params)
    return str(target), None


def image_grid(imgs: list[Image.Image], batch_size: int = 1, rows: int | None = None) -> Image.Image:
    """A1111's grid: `rows` rows (default: near-square, or batch_size wide when it divides evenly)."""
    if rows is None:
        rows = math.floor(math.sqrt(len(imgs)))
        while len(imgs) % rows != 0:
            rows -= 1
    cols = math.ceil(len(imgs) / max(1, rows))
    return grids.image_grid(imgs, cols=cols)


class GridAnnotation(grids.Label):
    """A1111's GridAnnotation(text, is_active)."""

    def __init__(self, text: str = "", is_active: bool = True):
        super().__init__(text, is_active)

    @property
    def is_active(self) -> bool:
        return self.active


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: list, ver_texts: list,
                          margin: int = 0) -> Image.Image:
    """Labels above (hor_texts: per column, a list of GridAnnotation) and left (ver_texts: per row)."""
    cols = (im.width + margin) // (width + margin)
    rows = (im.height + margin) // (height + margin)
    return grids.annotate(im, width, height, rows, cols, hor_texts, ver_texts, margin=margin)


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict]:
    """(infotext, other PNG text items)."""
    items = {k: v for k, v in (image.info or {}).items() if isinstance(v, str) and k != "parameters"}
    return read_image_infotext(image), items
