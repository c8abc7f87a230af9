"""Extras-tab postprocessing: upscale an existing image with the built-in pixel upscalers.

Follows A1111's postprocessing_upscale: scale by a factor, or to a size (scale to cover it, then centre-crop),
and optionally blend a second upscaler's result in with `upscaler_2_visibility`. Used by the Extras tab and by
/sdapi/v1/extra-single-image and /extra-batch-images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import EngineError
from .infotext import format_params
from .upscalers import PIXEL_UPSCALERS, upscale_image

EXTRAS_UPSCALERS = list(PIXEL_UPSCALERS)   # "None" here means: do not upscale


class PostprocessError(EngineError):
    """A request value that cannot be honoured; `field` names the request field (A1111's API field name)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class UpscaleRequest:
    resize_mode: int = 0          # 0: scale by `factor`; 1: resize to width x height
    factor: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True             # resize_mode 1: crop the covering image to exactly width x height
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0


def upscaler_name(name: str | None, field: str) -> str | None:
    """The canonical upscaler name (case-insensitive match), None for "None"."""
    for known in EXTRAS_UPSCALERS:
        if known.lower() == (name or "None").strip().lower():
            return None if known == "None" else known
    raise PostprocessError(field, f"unknown upscaler {name!r}; valid: {', '.join(EXTRAS_UPSCALERS)}")


def _target(image: Image.Image, req: UpscaleRequest, max_pixels: int) -> tuple[tuple[int, int], dict[str, Any]]:
    if req.resize_mode == 1:
        scale = max(req.width / image.width, req.height / image.height)
        info: dict[str, Any] = {"Postprocess upscale to": f"{req.width}x{req.height}"}
    else:
        scale = req.factor
        info = {"Postprocess upscale by": int(req.factor) if float(req.factor).is_integer() else req.factor}
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size[0] * size[1] > max_pixels:
        field = "upscaling_resize_w" if req.resize_mode == 1 else "upscaling_resize"
        raise PostprocessError(field, f"the result would be {size[0]}x{size[1]}, more than the {max_pixels} "
                                      "pixels allowed (setting img_max_pixels)")
    return size, info


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def upscale(image: Image.Image, req: UpscaleRequest, max_pixels: int) -> tuple[Image.Image, str]:
    """Upscale one image; returns the result (RGB) and its "postprocessing" infotext ("" if unchanged)."""
    first = upscaler_name(req.upscaler_1, "upscaler_1")
    second = upscaler_name(req.upscaler_2, "upscaler_2")
    source = image.convert("RGB")
    if first is None:
        return source, ""
    size, info = _target(source, req, max_pixels)
    result = upscale_image(source, first, *size)
    info["Postprocess upscaler"] = first
    if second is not None and req.upscaler_2_visibility > 0:
        result = Image.blend(result, upscale_image(source, second, *size), req.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    if req.resize_mode == 1 and req.crop:
        result = _centre_crop(result, req.width, req.height)
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result, format_params(info)


def carry_text_info(source: Image.Image, result: Image.Image, postprocessing: str) -> None:
    """Keep the source's text chunks (its generation infotext) on the result and add the postprocessing line."""
    result.info = {k: v for k, v in source.info.items() if isinstance(k, str) and isinstance(v, str)}
    if postprocessing:
        result.info["postprocessing"] = postprocessing
