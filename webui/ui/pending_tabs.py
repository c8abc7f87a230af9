"""Tabs whose backend is not built yet: Inpaint, Outpaint, Depth, Extras, Extensions.

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


def _prompts(tab: str) -> None:
    gr.Textbox(label="Prompt", elem_id=f"{tab}_prompt", lines=2)
    gr.Textbox(label="Negative prompt", elem_id=f"{tab}_neg_prompt", lines=1)


def build_inpaint() -> gr.ImageEditor:
    _notice("Inpainting", "#8")
    _prompts("inpaint")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            editor = gr.ImageEditor(label="Image — paint the area to change", type="pil", elem_id="img2maskimg",
                                    sources=["upload", "clipboard"], height=420,
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False)
            gr.Image(label="Or upload a mask (white = change)", type="pil", image_mode="L",
                     sources=["upload", "clipboard"], elem_id="img_inpaint_mask", height=200)
        with gr.Column(scale=1):
            gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
            gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked", label="Mask mode",
                     elem_id="img2img_mask_mode")
            gr.Radio(["fill", "original", "latent noise", "latent nothing"], value="original",
                     label="Masked content", elem_id="img2img_inpainting_fill")
            gr.Radio(["Whole picture", "Only masked"], value="Whole picture", label="Inpaint area",
                     elem_id="img2img_inpaint_full_res")
            gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                      elem_id="img2img_inpaint_full_res_padding")
            gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="inpaint_denoising_strength")
            _action("Generate", "inpaint_generate", "Inpainting", "#8")
    return editor


def build_outpaint() -> gr.Image:
    _notice("Outpainting", "#8")
    _prompts("outpaint")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(label="Image to extend", type="pil", sources=["upload", "clipboard"],
                             elem_id="outpaint_image", height=420)
        with gr.Column(scale=1):
            gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id="outpaint_pixels")
            gr.CheckboxGroup(["left", "right", "up", "down"], value=["left", "right", "up", "down"],
                             label="Outpainting direction", elem_id="outpaint_directions")
            gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id="outpaint_mask_blur")
            gr.Slider(1, 4, value=1, step=0.01, label="Fall-off exponent", elem_id="outpaint_falloff")
            gr.Slider(0, 1, value=0.05, step=0.01, label="Color variation", elem_id="outpaint_color_variation")
            _action("Generate", "outpaint_generate", "Outpainting", "#8")
    return image


def build_depth() -> gr.Image:
    _notice("Depth-to-image", "#8")
    _prompts("depth")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"], elem_id="depth_image",
                             height=420)
        with gr.Column(scale=1):
            gr.Markdown("Needs an SD 2 depth checkpoint (`512-depth-ema`); the depth map is estimated from the image.")
            gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="depth_denoising_strength")
            gr.Image(label="Depth map (optional, instead of estimating it)", type="pil", image_mode="L",
                     sources=["upload"], elem_id="depth_map", height=160)
            _action("Generate", "depth_generate", "Depth-to-image", "#8")
    return image


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
