"""/extra-single-image and /extra-batch-images: the Extras tab's upscaling (webui/engine/postprocess.py) over HTTP.

The output keeps the input's text metadata and adds a `postprocessing` infotext chunk. Face restoration is not
available (its fields are accepted and ignored).
"""
from __future__ import annotations

import html

from ..engine.postprocess import PostprocessError, UpscaleRequest, carry_text_info, upscale
from .errors import field_error
from .images import decode_image, encode_image
from .models import ExtrasBaseRequest


def upscale_request(req: ExtrasBaseRequest) -> UpscaleRequest:
    return UpscaleRequest(resize_mode=req.resize_mode, factor=req.upscaling_resize, width=req.upscaling_resize_w,
                          height=req.upscaling_resize_h, crop=req.upscaling_crop, upscaler_1=req.upscaler_1,
                          upscaler_2=req.upscaler_2, upscaler_2_visibility=req.extras_upscaler_2_visibility)


def process(images: list[tuple[str, str]], req: ExtrasBaseRequest, max_pixels: int, fmt: str
            ) -> tuple[list[str], str]:
    """(base64 data, field name) pairs → base64 results and A1111's html_info."""
    out, text = [], ""
    options = upscale_request(req)
    for data, field in images:
        image = decode_image(data, field, max_pixels)
        try:
            result, text = upscale(image, options, max_pixels)
        except PostprocessError as exc:
            raise field_error(exc.field, str(exc)) from None
        carry_text_info(image, result, text)
        out.append(encode_image(result, fmt, result.info.get("parameters")))
    html_info = "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
    return out, html_info
