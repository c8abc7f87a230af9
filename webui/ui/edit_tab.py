"""The frame the Inpaint, Outpaint and Depth tabs share: prompts, a compact parameter column, the tab's own
inputs, the output panel, and Generate → queue → follow (the same job flow as txt2img/img2img).

Each tab gives `build` its own inputs (`inputs()`), the form → params mapping (`edit_fields.py`), and
optionally extra result components filled from the finished job (the Depth tab shows the depth map used).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from ..app import App
from ..engine.errors import EngineError
from ..engine.params import GenerationParams
from . import generation_panel, html, output_panel, progress, send_to, toprow
from .generation_tab import GenerationTab
from .output_panel import selected_value

PRIVATE = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
MakeParams = Callable[[dict, Any], GenerationParams]


@dataclass
class EditTab:
    name: str
    fields: dict
    top: toprow.Toprow
    out: output_panel.OutputPanel
    job: gr.BrowserState
    view: progress.JobDisplay
    results: dict = field(default_factory=dict)          # extra result components, e.g. {"depth": gr.Image}
    status: gr.HTML | None = None

    def inputs(self) -> list:
        return list(self.fields.values())

    def outputs(self) -> list:
        return self.view.outputs() + list(self.results.values())

    def follower(self, app: App):
        """The generator that shows a job (after Generate, and after a page reload)."""
        def follow(job_id: str | None):
            yield from progress.watch(app, self.view, job_id)
            job = progress.find_job(app, job_id)
            extra = getattr(getattr(job, "result", None), "extra_images", None) or {}
            updates = {component: (extra[key][0] if extra.get(key) else None)
                       for key, component in self.results.items()}
            if updates:
                yield updates
        return follow


def _panel(app: App, tab: str, with_size: bool, denoising: float) -> dict:
    f: dict = {}
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(app.engine.samplers.names(), value=generation_panel.default_sampler(app),
                                        label="Sampling method", elem_id=f"{tab}_sampling")
        f["scheduler"] = gr.Dropdown(app.engine.schedules.labels(), value=generation_panel.default_scheduler(app),
                                     label="Schedule type", elem_id=f"{tab}_scheduler")
    f["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    if with_size:
        width, height = generation_panel.default_size(app)
        with gr.Row():
            f["width"] = gr.Slider(64, 2048, value=width, step=8, label="Width", elem_id=f"{tab}_width")
            f["height"] = gr.Slider(64, 2048, value=height, step=8, label="Height", elem_id=f"{tab}_height")
    with gr.Row():
        f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    f["cfg_scale"] = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")
    f["denoising_strength"] = gr.Slider(0, 1, value=denoising, step=0.01, label="Denoising strength",
                                        elem_id=f"{tab}_denoising_strength")
    with gr.Row(equal_height=True):
        f["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", scale=0, min_width=48)
    random_seed.click(lambda: -1, None, f["seed"], **PRIVATE)
    return f


def build(app: App, name: str, clip_skip: gr.Slider, job: gr.BrowserState, inputs: Callable[[], dict],
          make_params: MakeParams, with_size: bool = True, denoising: float = 0.75,
          results: Callable[[], dict] | None = None, status: str | None = None,
          precheck: Callable[[App], None] | None = None) -> EditTab:
    top = toprow.build(name)
    with gr.Row(equal_height=False, elem_id=f"{name}_main"):
        with gr.Column(scale=1, elem_id=f"{name}_settings"):
            status_box = gr.HTML(status or "", elem_id=f"{name}_status")
            own = inputs()
            params = _panel(app, name, with_size, denoising)
        with gr.Column(scale=1, elem_id=f"{name}_results"):
            out = output_panel.build(name)
            extra = results() if results is not None else {}
    fields = {"prompt": top.prompt, "negative_prompt": top.negative_prompt} | params | own
    view = progress.JobDisplay(out.progress, out.preview, out.gallery, out.info, out.html_info, out.result,
                               out.selected, top.generate)
    tab = EditTab(name, fields, top, out, job, view, extra, status_box)
    _wire(app, tab, clip_skip, make_params, precheck)
    return tab


def _wire(app: App, tab: EditTab, clip_skip: gr.Slider, make_params: MakeParams,
          precheck: Callable[[App], None] | None) -> None:
    names = list(tab.fields)

    def submit(request: gr.Request, *values):
        *form, clip = values
        try:
            if precheck is not None:
                precheck(app)
            params = make_params(dict(zip(names, form)), clip)
            job = app.submit("img2img", params, owner=progress.owner_of(request))
        except (EngineError, ValueError) as exc:
            return None, "", html.message(str(exc), "error"), gr.update(interactive=True)
        return job.id, html.progress_bar(0, "Queued…"), "", gr.update(interactive=False)

    def control(action: str):
        def act(job_id: str | None, request: gr.Request):
            progress.control_job(app, job_id, action, request)
        return act

    tab.top.generate.click(
        submit, tab.inputs() + [clip_skip], [tab.job, tab.out.progress, tab.out.html_info, tab.top.generate], **PRIVATE,
    ).then(tab.follower(app), tab.job, tab.outputs(), **PRIVATE)
    tab.top.interrupt.click(control("interrupt"), tab.job, None, **PRIVATE)
    tab.top.skip.click(control("skip"), tab.job, None, **PRIVATE)


def wire_send(app: App, tab: EditTab, img2img: GenerationTab, clip_skip: gr.Slider, extras_image) -> None:
    """The output panel's "Send to" buttons: the selected result to img2img (with its parameters) or Extras."""
    outputs = img2img.inputs() + [clip_skip]
    selection = [tab.out.gallery, tab.out.selected, tab.out.result]

    def to_img2img(gallery, selected, result):
        image = send_to.gallery_image(gallery, selected)
        if image is None:
            return [gr.skip()] * len(outputs)
        return send_to.paste_updates(app, img2img, selected_value(result, selected, "infotexts") or "", image)

    def to_image(gallery, selected):
        image = send_to.gallery_image(gallery, selected)
        return gr.skip() if image is None else image

    switch = dict(api_visibility="private", show_progress="hidden")
    tab.out.send["img2img"].click(to_img2img, selection, outputs, **PRIVATE).then(
        None, None, None, js=send_to.switch_tab_js("img2img"), **switch)
    tab.out.send["extras"].click(to_image, [tab.out.gallery, tab.out.selected], extras_image, **PRIVATE).then(
        None, None, None, js=send_to.switch_tab_js("extras"), **switch)
