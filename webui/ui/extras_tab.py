"""The Extras tab: upscale an image with the built-in pixel upscalers and save it to outputs/extras-images.

The work is `webui/engine/postprocess.upscale`, the same function behind /sdapi/v1/extra-single-image.
"""
from __future__ import annotations

import html as html_lib

import gradio as gr
from PIL import Image

from ..app import App
from ..engine.postprocess import EXTRAS_UPSCALERS, PostprocessError, UpscaleRequest, carry_text_info, upscale
from . import html

PRIVATE = dict(api_visibility="private", concurrency_limit=None)


def build(app: App) -> gr.Image:
    """Lays out the tab; returns its source image (a "Send to extras" target)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"], elem_id="extras_image",
                             height=420, image_mode=None)
        with gr.Column(scale=1):
            mode = gr.State(0)
            with gr.Tabs():
                with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as by_tab:
                    factor = gr.Slider(1, 8, value=4, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as to_tab:
                    width = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                    height = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                       elem_id="extras_upscaling_resize_h")
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            by_tab.select(lambda: 0, None, mode, **PRIVATE)
            to_tab.select(lambda: 1, None, mode, **PRIVATE)
            first = gr.Dropdown(EXTRAS_UPSCALERS, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
            second = gr.Dropdown(EXTRAS_UPSCALERS, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
            visibility = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                   elem_id="extras_upscaler_2_visibility")
            button = gr.Button("Generate", variant="primary", elem_id="extras_generate")
    result = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="extras_result",
                      height=420)
    status = gr.HTML("", elem_id="extras_generate_status")

    def run(source: Image.Image | None, mode: int, factor: float, width: int, height: int, crop: bool,
            first: str, second: str, visibility: float):
        if source is None:
            return None, html.message("Upload an image first.", "error")
        request = UpscaleRequest(resize_mode=mode, factor=factor, width=int(width), height=int(height), crop=crop,
                                 upscaler_1=first, upscaler_2=second, upscaler_2_visibility=visibility)
        try:
            output, text = upscale(source, request, int(app.settings.get("img_max_pixels")))
        except PostprocessError as exc:
            return None, html.message(str(exc), "error")
        carry_text_info(source, output, text)
        note = _save(app, output)
        return output, html.message(f"{output.width}×{output.height}. {text}. {note}".strip(), "info")

    button.click(run, [image, mode, factor, width, height, crop, first, second, visibility], [result, status],
                 **PRIVATE)
    return image


def _save(app: App, image: Image.Image) -> str:
    if not app.settings.get("samples_save"):
        return ""
    # the source's generation infotext stays with the upscaled copy, as A1111's Extras keeps it
    path = app.storage.save(image, "extras", 0, image.info.get("parameters"),
                            extension=app.settings.get("samples_format"))
    return f"Saved {html_lib.escape(path.name)}."
