"""Saving generated images in A1111's layout: outputs/<kind>-images/YYYY-MM-DD/NNNNN-SEED.png.

NNNNN is one past the highest number already in the folder (starting at 00000, like A1111). A file is
written to a hidden temp file first and then published under its final name with a no-clobber link, so a
reader never sees a partial image and no save ever overwrites another, even from concurrent threads.
"""
from __future__ import annotations

import datetime
import os
import re
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from webui.atomic_files import publish_exclusive, remove_quietly, temp_path_for
from webui.engine.infotext import save_image_with_infotext

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
RE_KIND = re.compile(r"^[A-Za-z0-9_]+$")
MAX_PUBLISH_ATTEMPTS = 10_000


def next_sequence_number(folder: Path) -> int:
    """One past the highest leading number of a file name in `folder` ("00012-42.png" counts as 12)."""
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        head = os.path.splitext(name)[0].split("-")[0]
        if head.isdigit():
            highest = max(highest, int(head))
    return highest + 1


class OutputStorage:
    def __init__(self, outputs_dir: str | os.PathLike[str]):
        self.outputs_dir = Path(outputs_dir)
        self.folder_overrides: dict[str, Path] = {}   # kind → folder chosen in settings (A1111's outdir_*)
        self._lock = threading.Lock()

    def folder(self, kind: str, date: datetime.date | None = None) -> Path:
        if not RE_KIND.match(kind):
            raise ValueError(f"invalid output kind: {kind!r}")
        date = date or datetime.date.today()
        base = self.folder_overrides.get(kind) or self.outputs_dir / f"{kind}-images"
        return Path(base) / date.isoformat()

    def save(self, image: Image.Image, kind: str, seed: int, infotext: str | None = None,
             date: datetime.date | None = None, extension: str = "png", **save_kwargs: Any) -> Path:
        """Save `image` with its infotext and return the final path. `save_kwargs` go to PIL (e.g. quality)."""
        extension = extension.lower().lstrip(".")
        if extension not in FORMATS:
            raise ValueError(f"unsupported image extension: {extension!r}")
        folder = self.folder(kind, date)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(folder / f"image.{extension}")
        try:
            save_image_with_infotext(image, tmp, infotext, format=FORMATS[extension], **save_kwargs)
            return self._publish(tmp, folder, f"{int(seed)}.{extension}")
        finally:
            remove_quietly(tmp)

    def _publish(self, tmp: Path, folder: Path, suffix: str) -> Path:
        # The lock avoids retries between our own threads; the no-clobber link is what guarantees
        # uniqueness, also against other processes saving into the same folder.
        with self._lock:
            for _ in range(MAX_PUBLISH_ATTEMPTS):
                dest = folder / f"{next_sequence_number(folder):05}-{suffix}"
                try:
                    publish_exclusive(tmp, dest)
                except FileExistsError:
                    continue
                return dest
        raise RuntimeError(f"could not find a free file name in {folder}")
