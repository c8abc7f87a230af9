"""A txt2img or img2img tab: layout, and the Generate → queue → poll cycle with Interrupt / Skip / seeds."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import App
from ..engine.errors import EngineError
from . import extra_networks, generation_panel, html, output_panel, progress, scripts_ui, toprow
from .fields import COMMON_FIELDS, HIRES_FIELDS, IMG2IMG_FIELDS, build_params

PRIVATE = dict(api_visibility="private", concurrency_limit=None)


@dataclass
class GenerationTab:
    name: str                         # "txt2img" or "img2img"
    fields: dict                      # field name → component (see fields.py)
    top: toprow.Toprow
    out: output_panel.OutputPanel
    seeds: generation_panel.SeedButtons
    job: gr.BrowserState              # the id of this tab's latest job, kept across page reloads
    view: progress.JobDisplay
    scripts: scripts_ui.ScriptsUI | None = None   # extension scripts (Script dropdown, always-on controls)

    @property
    def field_names(self) -> list[str]:
        return list(self.fields)

    def inputs(self) -> list:
        return list(self.fields.values())


def job_state(name: str) -> gr.BrowserState:
    """Create outside any Tab: a BrowserState inside a tab that is not shown yet is not read back from
    localStorage after a reload (Gradio 6.31 renders hidden tabs lazily)."""
    return gr.BrowserState(None, storage_key=f"studio_{name}_job")


def build(app: App, name: str, clip_skip: gr.Slider, job: gr.BrowserState) -> GenerationTab:
    img2img = name == "img2img"
    top = toprow.build(name)
    extra_networks.build(app, name, top.prompt)
    with gr.Row(equal_height=False, elem_id=f"{name}_main"):
        with gr.Column(scale=1, elem_id=f"{name}_settings"):
            extra = generation_panel.build_init_image(name) if img2img else {}
            params, seeds = generation_panel.build(app, name, hires=not img2img)
            scripts = scripts_ui.build(app, name)
        with gr.Column(scale=1, elem_id=f"{name}_results"):
            out = output_panel.build(name)
    fields = {"prompt": top.prompt, "negative_prompt": top.negative_prompt} | params | extra
    order = COMMON_FIELDS + (IMG2IMG_FIELDS if img2img else HIRES_FIELDS)
    fields = {key: fields[key] for key in order}
    view = progress.JobDisplay(out.progress, out.preview, out.gallery, out.info, out.html_info, out.result,
                               out.selected, top.generate)
    tab = GenerationTab(name, fields, top, out, seeds, job, view, scripts)
    _wire_generation(app, tab, clip_skip)
    _wire_seeds(tab)
    return tab


def _wire_generation(app: App, tab: GenerationTab, clip_skip: gr.Slider) -> None:
    names = tab.field_names

    script_inputs = tab.scripts.inputs() if tab.scripts is not None else []

    def submit(request: gr.Request, *values):
        form, clip_skip_value, script_values = values[:len(names)], values[len(names)], values[len(names) + 1:]
        try:
            params = build_params(dict(zip(names, form)), clip_skip_value, img2img=tab.name == "img2img")
            scripts = tab.scripts.selection(script_values) if tab.scripts is not None else None
            job = app.submit(tab.name, params, owner=progress.owner_of(request), scripts=scripts)
        except (EngineError, ValueError) as exc:
            return None, "", html.message(str(exc), "error"), gr.update(interactive=True)
        return job.id, html.progress_bar(0, "Queued…"), "", gr.update(interactive=False)

    follow = make_follower(app, tab)

    def interrupt(job_id: str | None, request: gr.Request):
        progress.control_job(app, job_id, "interrupt", request)

    def skip(job_id: str | None, request: gr.Request):
        progress.control_job(app, job_id, "skip", request)

    tab.top.generate.click(
        submit, tab.inputs() + [clip_skip] + script_inputs,
        [tab.job, tab.out.progress, tab.out.html_info, tab.top.generate],
        show_progress="hidden", **PRIVATE,
    ).then(follow, tab.job, tab.view.outputs(), show_progress="hidden", **PRIVATE)
    tab.top.interrupt.click(interrupt, tab.job, None, show_progress="hidden", **PRIVATE)
    tab.top.skip.click(skip, tab.job, None, show_progress="hidden", **PRIVATE)


def make_follower(app: App, tab: GenerationTab):
    """The generator Gradio runs to show a job: after Generate, and again after a page reload."""
    def follow(job_id: str | None):
        yield from progress.watch(app, tab.view, job_id)
    return follow


def _wire_seeds(tab: GenerationTab) -> None:
    f, s, out = tab.fields, tab.seeds, tab.out

    def reuse(key: str):
        def pick(result: dict, selected: int):
            value = output_panel.selected_value(result, selected, key)
            return gr.skip() if value is None else value
        return pick

    s.random_seed.click(lambda: -1, None, f["seed"], show_progress="hidden", **PRIVATE)
    s.random_subseed.click(lambda: -1, None, f["subseed"], show_progress="hidden", **PRIVATE)
    s.reuse_seed.click(reuse("seeds"), [out.result, out.selected], f["seed"], show_progress="hidden", **PRIVATE)
    s.reuse_subseed.click(reuse("subseeds"), [out.result, out.selected], f["subseed"], show_progress="hidden",
                          **PRIVATE)
