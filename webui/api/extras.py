"""/extra-single-image and /extra-batch-images: upscaling with the built-in Lanczos and Nearest upscalers.

Follows A1111's postprocessing_upscale: scale by a factor or to a size (cover, then centre crop), and an
optional second upscaler blended in with `extras_upscaler_2_visibility`. The output keeps the input's text
metadata and adds a `postprocessing` infotext chunk. Face restoration is not available (ignored).
"""
from __future__ import annotations

import html
from typing import Any

from PIL import Image

from ..engine.infotext import format_params
from .errors import field_error
from .images import decode_image, encode_image
from .models import ExtrasBaseRequest

UPSCALERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}


def _upscaler(name: str, field: str) -> str | None:
    for known in UPSCALERS:
        if known.lower() == (name or "None").strip().lower():
            return None if known == "None" else known
    raise field_error(field, f"unknown upscaler {name!r}; valid: {', '.join(UPSCALERS)}")


def _target(image: Image.Image, req: ExtrasBaseRequest, max_pixels: int) -> tuple[tuple[int, int], dict[str, Any]]:
    if req.resize_mode == 1:
        scale = max(req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
        info = {"Postprocess upscale to": f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"}
    else:
        scale = req.upscaling_resize
        info = {"Postprocess upscale by": _number(req.upscaling_resize)}
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size[0] * size[1] > max_pixels:
        field = "upscaling_resize_w" if req.resize_mode == 1 else "upscaling_resize"
        raise field_error(field, f"the result would be {size[0]}x{size[1]}, more than the {max_pixels} pixels "
                                 "allowed (setting img_max_pixels)")
    return size, info


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def upscale(image: Image.Image, req: ExtrasBaseRequest, max_pixels: int) -> tuple[Image.Image, str]:
    """Upscale one image; returns it with its postprocessing infotext."""
    first = _upscaler(req.upscaler_1, "upscaler_1")
    second = _upscaler(req.upscaler_2, "upscaler_2")
    source = image.convert("RGB")
    if first is None:
        return source, ""
    size, info = _target(source, req, max_pixels)
    result = source.resize(size, UPSCALERS[first])
    info["Postprocess upscaler"] = first
    if second is not None and req.extras_upscaler_2_visibility > 0:
        result = Image.blend(result, source.resize(size, UPSCALERS[second]), req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    if req.resize_mode == 1 and req.upscaling_crop:
        result = _crop(result, req.upscaling_resize_w, req.upscaling_resize_h)
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result, format_params(info)


def process(images: list[tuple[str, str]], req: ExtrasBaseRequest, max_pixels: int, fmt: str
            ) -> tuple[list[str], str]:
    """(base64 data, field name) pairs → base64 results and A1111's html_info."""
    out, text = [], ""
    for data, field in images:
        image = decode_image(data, field, max_pixels)
        result, text = upscale(image, req, max_pixels)
        result.info = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        if text:
            result.info["postprocessing"] = text
        out.append(encode_image(result, fmt, result.info.get("parameters")))
    html_info = "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
    return out, html_info
