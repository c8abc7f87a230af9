"""The Inpaint tab: paint a mask over a picture (or upload one), then regenerate the masked area."""
from __future__ import annotations

import gradio as gr

from ..app import App
from ..engine import inpaint
from ..engine.params import RESIZE_MODES
from . import edit_fields, edit_tab


def _inputs() -> dict:
    f: dict = {}
    # Never set this editor's value from the server: in Gradio 6.31 that breaks it once its tab is hidden.
    f["editor"] = gr.ImageEditor(label="Image — paint the area to change", type="pil", elem_id="img2maskimg",
                                 sources=["upload", "clipboard"], height=420, image_mode="RGBA",
                                 brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False)
    f["mask_upload"] = gr.Image(label="Or upload a mask (white = change)", type="pil", image_mode="L",
                                sources=["upload", "clipboard"], elem_id="img_inpaint_mask", height=200)
    gr.Markdown("No mask? Transparent pixels of the picture are inpainted.", elem_id="inpaint_alpha_hint")
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                elem_id="inpaint_resize_mode")
    f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
    f["mask_mode"] = gr.Radio(list(inpaint.MASK_MODES), value=inpaint.MASK_MODES[0], label="Mask mode",
                              elem_id="img2img_mask_mode")
    f["inpainting_fill"] = gr.Radio(list(inpaint.FILL_MODES), value="original", label="Masked content",
                                    elem_id="img2img_inpainting_fill")
    with gr.Row():
        f["inpaint_area"] = gr.Radio(list(inpaint.INPAINT_AREAS), value=inpaint.INPAINT_AREAS[0],
                                     label="Inpaint area", elem_id="img2img_inpaint_full_res")
        f["inpaint_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                         elem_id="img2img_inpaint_full_res_padding")
    return f


def build(app: App, clip_skip: gr.Slider, job: gr.BrowserState) -> edit_tab.EditTab:
    return edit_tab.build(app, "inpaint", clip_skip, job, _inputs, edit_fields.inpaint_params)
