"""Outpainting as a selectable img2img script (what the Outpaint tab does: webui/engine/outpaint.py).

The canvas grows by `pixels` on the chosen sides; the new border is inpainted with the request's prompt and
sampler settings. "Poor man's outpainting" is the same script under A1111's title. Script args (A1111's
poor-man's order): pixels, mask_blur, inpainting_fill (0 fill, 1 original, 2 latent noise, 3 latent nothing,
or the label), direction (list of "left", "right", "up", "down").
"""
from __future__ import annotations

from webui.engine import inpaint, outpaint
from webui.engine.errors import InvalidParameterError
from webui.extensions_api import Script, process_images


def fill_index(value) -> int:
    if isinstance(value, str) and not value.strip().isdigit():
        labels = [m.lower() for m in inpaint.FILL_MODES]
        if value.strip().lower() not in labels:
            raise InvalidParameterError("script_args", f"masked content must be one of "
                                                       f"{', '.join(inpaint.FILL_MODES)} (got {value!r})")
        return labels.index(value.strip().lower())
    index = int(value)
    if index not in range(len(inpaint.FILL_MODES)):
        raise InvalidParameterError("script_args", f"masked content must be 0–{len(inpaint.FILL_MODES) - 1} (got {index})")
    return index


def whole(name: str, value) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError("script_args", f"{name} must be a whole number (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError("script_args", f"{name} must be a whole number (got {value!r})") from None
    if number != int(number):
        raise InvalidParameterError("script_args", f"{name} must be a whole number (got {value!r})")
    return int(number)


class Outpainting(Script):
    def title(self) -> str:
        return "Outpainting"

    def show(self, is_img2img: bool):
        return is_img2img

    def ui(self, is_img2img: bool):
        import gradio as gr

        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4,
                              elem_id=self.elem_id("mask_blur"))
        inpainting_fill = gr.Radio(label="Masked content", choices=list(inpaint.FILL_MODES), value="fill",
                                   type="index", elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=list(outpaint.DIRECTIONS),
                                     value=list(outpaint.DIRECTIONS), elem_id=self.elem_id("direction"))
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p, pixels=128, mask_blur=4, inpainting_fill=0, direction=None):
        if not p.init_images:
            raise InvalidParameterError("init_images", "outpainting needs an init image")
        directions = list(outpaint.DIRECTIONS) if direction is None else list(direction)
        blur = whole("mask_blur", mask_blur)
        params = outpaint.outpaint_params(p.copy(), p.init_images[0].convert("RGB"), whole("pixels", pixels),
                                          directions, blur, fill_index(inpainting_fill))
        return process_images(params)


class PoorMansOutpainting(Outpainting):
    def title(self) -> str:
        return "Poor man's outpainting"
