"""The result column of a generation tab: progress, live preview, gallery, "Send to" buttons, generation info."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

# No "Send to inpaint" yet: in Gradio 6.31 an ImageEditor whose value was set by the server throws on every
# later event once its tab is hidden ("reading 'get_data'"), so images reach it only by upload for now.
SEND_TARGETS = ("img2img", "extras")
_SEND_LABELS = {"img2img": "🖼️ Send to img2img", "extras": "📐 Send to extras"}


@dataclass
class OutputPanel:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    send: dict[str, gr.Button]
    info: gr.Textbox
    html_info: gr.HTML
    result: gr.State        # {"job_id", "infotexts", "seeds", "subseeds"} of the shown generation
    selected: gr.State      # index of the selected gallery image


def build(tab: str) -> OutputPanel:
    progress = gr.HTML("", elem_id=f"{tab}_progress")
    preview = gr.Image(label="Live preview", type="pil", format="jpeg", interactive=False, visible=False,
                       elem_id=f"{tab}_live_preview", height=256)
    gallery = gr.Gallery(label="Output", elem_id=f"{tab}_gallery", columns=4, height=420, format="png",
                         interactive=False, object_fit="contain", buttons=["download", "fullscreen"])
    with gr.Row(elem_id=f"image_buttons_{tab}"):
        send = {target: gr.Button(_SEND_LABELS[target], elem_id=f"{tab}_send_to_{target}", size="sm")
                for target in SEND_TARGETS}
    info = gr.Textbox(label="Generation info", elem_id=f"generation_info_{tab}", lines=3, max_lines=12,
                      interactive=False, buttons=["copy"])
    html_info = gr.HTML("", elem_id=f"html_info_{tab}")
    result = gr.State({})
    selected = gr.State(0)
    panel = OutputPanel(progress, preview, gallery, send, info, html_info, result, selected)
    _wire_selection(panel)
    return panel


def _wire_selection(panel: OutputPanel) -> None:
    def select(result: dict, evt: gr.SelectData):
        texts = (result or {}).get("infotexts") or []
        index = evt.index if isinstance(evt.index, int) else 0
        return index, texts[index] if index < len(texts) else gr.skip()

    panel.gallery.select(select, panel.result, [panel.selected, panel.info], show_progress="hidden",
                         api_visibility="private", concurrency_limit=None)


def selected_value(result: dict, selected: int, key: str):
    values = (result or {}).get(key) or []
    if not values:
        return None
    return values[selected] if 0 <= selected < len(values) else values[0]
