"""PNG Info: read the generation parameters stored in a dropped image."""
from __future__ import annotations

import html as _html
from dataclasses import dataclass

import gradio as gr
from PIL import Image, UnidentifiedImageError

from ..engine.infotext import read_image_infotext
from . import html

SEND_TARGETS = ("txt2img", "img2img", "extras")  # no inpaint: see output_panel.SEND_TARGETS


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    details: gr.HTML
    send: dict[str, gr.Button]


def read_metadata(path: str | None) -> tuple[str, str]:
    """(infotext or "", HTML listing every text item in the file)."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            text = read_image_infotext(image) or ""
            items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, (str, int, float))}
            size, fmt = image.size, image.format
    except (OSError, UnidentifiedImageError) as exc:
        return "", html.message(f"Cannot read this image: {exc}", "error")
    rows = [f"<p><b>{_html.escape(k)}</b><br>{_html.escape(str(v))}</p>" for k, v in items.items() if k != "parameters"]
    head = f"<p>{fmt} image, {size[0]}×{size[1]}</p>"
    if not text:
        head += html.message("No generation parameters found in this image.", "warning")
    return text, head + "".join(rows)


def build() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=420)
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", elem_id="pnginfo_generation_info", lines=6, max_lines=20,
                                    interactive=False, buttons=["copy"])
            details = gr.HTML("", elem_id="pnginfo_html")
            with gr.Row():
                send = {t: gr.Button(f"Send to {t}", elem_id=f"pnginfo_send_to_{t}", size="sm") for t in SEND_TARGETS}
    image.change(read_metadata, image, [parameters, details], show_progress="hidden", api_visibility="private",
                 concurrency_limit=None)
    return PngInfoTab(image, parameters, details, send)
