"""Tabs whose backend is not built yet: Extras and Extensions. (Inpaint, Outpaint and Depth are working tabs
now: `inpaint_tab.py`, `outpaint_tab.py`, `depth_tab.py`.)

They carry their real controls, so the layout is settled, but their action buttons only say that the
feature is not available yet. They never produce an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import App
from . import html

PRIVATE = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")


@dataclass
class PendingTabs:
    """Image inputs of the non-generation tabs, for "Send to" (only Extras is a target so far)."""
    inpaint_image: gr.ImageEditor
    outpaint_image: gr.Image
    depth_image: gr.Image
    extras_image: gr.Image


def _notice(what: str, issue: str) -> gr.HTML:
    return gr.HTML(html.not_available(what, issue), elem_classes=["studio-pending"])


def _action(label: str, elem_id: str, what: str, issue: str) -> None:
    """A button that answers with the not-available message in a status line under it."""
    button = gr.Button(label, variant="primary", elem_id=elem_id)
    status = gr.HTML("", elem_id=f"{elem_id}_status")
    button.click(lambda: html.not_available(what, issue), None, status, **PRIVATE)


def build_extras() -> gr.Image:
    _notice("Upscaling and postprocessing", "#8")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"], elem_id="extras_image",
                             height=420)
        with gr.Column(scale=1):
            with gr.Tabs():
                with gr.Tab("Scale by", id="scale_by"):
                    gr.Slider(1, 8, value=4, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="scale_to"):
                    gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                    gr.Slider(64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h")
            gr.Dropdown(["None", "Lanczos", "Nearest"], value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
            gr.Dropdown(["None", "Lanczos", "Nearest"], value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
            _action("Generate", "extras_generate", "Upscaling", "#8")
    return image


def build_extensions(app: App) -> None:
    _notice("Installing and managing extensions", "#7")
    folder = app.engine.paths.extensions_dir
    installed = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    with gr.Tabs():
        with gr.Tab("Installed", id="extensions_installed"):
            gr.Dataframe(value=[[name, "not loaded"] for name in installed] or None, headers=["Extension", "Status"],
                         interactive=False, elem_id="extensions_installed_table")
            gr.Markdown(f"Extensions folder: `{folder}`")
        with gr.Tab("Install from URL", id="extensions_install"):
            gr.Textbox(label="URL for extension's git repository", elem_id="extension_to_install")
            gr.Textbox(label="Specific branch name", placeholder="Leave empty for default main branch",
                       elem_id="extension_branch")
            _action("Install", "install_extension_button", "Installing extensions", "#7")
