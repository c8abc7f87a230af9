"""The Outpaint tab: extend the canvas on chosen sides, then inpaint the new border with the prompt."""
from __future__ import annotations

import gradio as gr

from ..app import App
from ..engine import inpaint, outpaint
from . import edit_fields, edit_tab


def _inputs() -> dict:
    f: dict = {}
    f["image"] = gr.Image(label="Image to extend", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                          elem_id="outpaint_image", height=420)
    f["pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id="outpaint_pixels")
    f["directions"] = gr.CheckboxGroup(list(outpaint.DIRECTIONS), value=list(outpaint.DIRECTIONS),
                                       label="Outpainting direction", elem_id="outpaint_directions")
    f["mask_blur"] = gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id="outpaint_mask_blur")
    f["inpainting_fill"] = gr.Radio(list(inpaint.FILL_MODES), value="fill", label="Masked content",
                                    elem_id="outpaint_inpainting_fill")
    gr.Markdown("The canvas grows to a multiple of 8 pixels; at mask blur 0 the original pixels stay as they are.",
                elem_id="outpaint_hint")
    return f


def build(app: App, clip_skip: gr.Slider, job: gr.BrowserState) -> edit_tab.EditTab:
    return edit_tab.build(app, "outpaint", clip_skip, job, _inputs, edit_fields.outpaint_params, with_size=False,
                          denoising=0.8)
