"""The Depth tab: img2img on an SD 2 depth checkpoint, guided by an estimated or uploaded depth map."""
from __future__ import annotations

import gradio as gr

from ..app import App
from ..engine import depth
from ..engine.errors import EngineError, InvalidParameterError
from ..engine.params import RESIZE_MODES
from . import edit_fields, edit_tab, html


def status(app: App) -> tuple[str, str]:
    model = app.engine.models.current
    if model is None:
        return "No checkpoint is loaded.", "error"
    return edit_fields.depth_status(depth.is_depth_model(model), model.family.label,
                                    app.engine.depth.describe(model), str(app.engine.depth.depth_dir))


def _precheck(app: App) -> None:
    message, kind = status(app)
    if kind == "error":
        raise EngineError(message)


def _make_params(app: App):
    def make(values: dict, clip_skip):
        params = edit_fields.depth_params(values, clip_skip)
        model = app.engine.models.current
        if params.depth_map is None and model is not None and app.engine.depth.describe(model) is None:
            raise InvalidParameterError("depth_map", depth.no_estimator_message(app.engine.depth.depth_dir))
        return params
    return make


def _inputs() -> dict:
    f: dict = {}
    f["image"] = gr.Image(label="Image", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                          elem_id="depth_image", height=420)
    f["depth_map"] = gr.Image(label="Depth map (optional; white = near)", type="pil", image_mode="L",
                              sources=["upload", "clipboard"], elem_id="depth_map", height=200)
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                elem_id="depth_resize_mode")
    return f


def _results() -> dict:
    return {"depth": gr.Image(label="Depth map used", type="pil", interactive=False, elem_id="depth_used",
                              height=256)}


def build(app: App, clip_skip: gr.Slider, job: gr.BrowserState) -> edit_tab.EditTab:
    message, kind = status(app)
    tab = edit_tab.build(app, "depth", clip_skip, job, _inputs, _make_params(app), results=_results,
                         status=html.message(message, kind), precheck=_precheck)
    tab.top.generate.click(lambda: html.message(*status(app)), None, tab.status, **edit_tab.PRIVATE)
    return tab
