"""/png-info: the infotext of an image, its other metadata, and the parsed parameters."""
from __future__ import annotations

from typing import Any

from PIL import Image

from ..engine.infotext import parse_infotext, read_image_infotext

# Keys of image.info that are not user metadata (A1111's read_info_from_image drops these too).
_SKIPPED = frozenset({"parameters", "exif", "icc_profile", "dpi", "jfif", "jfif_version", "jfif_unit",
                      "jfif_density", "transparency", "gamma", "srgb", "chromaticity", "progressive",
                      "progression", "loop", "duration", "background", "adobe", "adobe_transform"})


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def png_info(image: Image.Image) -> dict[str, Any]:
    text = read_image_infotext(image) or ""
    items = {k: _json_safe(v) for k, v in image.info.items() if isinstance(k, str) and k not in _SKIPPED}
    return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}
