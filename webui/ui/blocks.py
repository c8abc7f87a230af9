"""The whole page: the quicksettings bar above the tabs, then txt2img, img2img, Inpaint, Outpaint, Depth,
Extras, PNG Info, Settings and Extensions."""
from __future__ import annotations

import html

import gradio as gr

from ..app import App
from ..security.exposure import exposure_warning
from . import (depth_tab, edit_tab, extensions_tab, extras_tab, generation_tab, inpaint_tab, outpaint_tab,
               pnginfo_tab, quicksettings, scripts_ui, send_to, settings_tab)

TITLE = "Stable Diffusion studio"


def build_ui(app: App) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        _exposure_banner(app)
        qs = quicksettings.build(app)
        jobs = {name: generation_tab.job_state(name)
                for name in ("txt2img", "img2img", "inpaint", "outpaint", "depth")}
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = generation_tab.build(app, "txt2img", qs.clip_skip, jobs["txt2img"])
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = generation_tab.build(app, "img2img", qs.clip_skip, jobs["img2img"])
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"):
                inpaint = inpaint_tab.build(app, qs.clip_skip, jobs["inpaint"])
            with gr.Tab("Outpaint", id="outpaint", elem_id="tab_outpaint"):
                outpaint = outpaint_tab.build(app, qs.clip_skip, jobs["outpaint"])
            with gr.Tab("Depth", id="depth", elem_id="tab_depth"):
                depth = depth_tab.build(app, qs.clip_skip, jobs["depth"])
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras_image = extras_tab.build(app)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo_tab.build()
            scripts_ui.build_extension_tabs(app)   # on_ui_tabs
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_tab.build(app)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(app)
        send_to.wire(app, send_to.Targets(txt2img, img2img, extras_image, qs.clip_skip), png)
        for tab in (inpaint, outpaint, depth):
            edit_tab.wire_send(app, tab, img2img, qs.clip_skip, extras_image)
        _on_page_load(app, demo, qs, [txt2img, img2img, inpaint, outpaint, depth])
    return demo


def _exposure_banner(app: App) -> None:
    warning = exposure_warning(app.args) if app.args is not None else None
    if warning:
        gr.HTML(f'<div role="alert" style="background:#7f1d1d;color:#fff;padding:.6em 1em;border-radius:6px;'
                f'font-weight:600">⚠ {html.escape(warning)}</div>', elem_id="exposure_warning")


def _on_page_load(app: App, demo: gr.Blocks, qs: quicksettings.QuickSettings,
                  tabs: list) -> None:
    """Show the models in use now, and reconnect each tab to the job it was following before a reload."""
    demo.load(lambda: quicksettings.on_page_load(app), None, [qs.checkpoint, qs.vae, qs.status],
              show_progress="hidden", api_visibility="private", concurrency_limit=None)
    for tab in tabs:
        follower, outputs = (tab.follower(app), tab.outputs()) if isinstance(tab, edit_tab.EditTab) else \
            (generation_tab.make_follower(app, tab), tab.view.outputs())
        demo.load(follower, tab.job, outputs, show_progress="hidden", api_visibility="private",
                  concurrency_limit=None)
