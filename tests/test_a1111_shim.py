"""The A1111 compatibility package (`modules`): an extension written for A1111, on disk in a data dir, loaded
the real way (App.create → extension host) and run on the SD1 fixture."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from webui.app import App
from webui.cli import build_parser
from webui.engine.infotext import parse_infotext, read_image_infotext
from webui.engine.params import GenerationParams
from webui.extensions.scripts import ScriptSelection
from webui.services.job_queue import JobStatus

SMALL = dict(steps=2, width=64, height=64, seed=100, sampler_name="Euler", cfg_scale=5.0)

# Written as for AUTOMATIC1111 v1.10: only `modules.*` imports, A1111 names and signatures.
A1111_EXTENSION = '''
import gradio as gr

import modules.scripts as scripts
from modules import images, script_callbacks, shared
from modules.processing import (Processed, StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img,
                                process_images)
from modules.ui_components import FormRow, InputAccordion, ToolButton

EVENTS = []
BASEDIR = scripts.basedir()


class Prefixer(scripts.Script):
    def title(self):
        return "Prefixer"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Prefixer") as enabled:
            with FormRow():
                word = gr.Textbox(value="shiny", label="Word")
                ToolButton(value="x")
        return [enabled, word]

    def process(self, p, enabled, word):
        if not enabled:
            return
        EVENTS.append(("process", isinstance(p, StableDiffusionProcessingTxt2Img),
                       isinstance(p, StableDiffusionProcessingImg2Img), shared.opts.prefixer_suffix,
                       shared.state.interrupted, list(p.all_seeds)))
        suffix = shared.opts.prefixer_suffix
        p.all_prompts = [f"{word} {prompt}{suffix} {i}" for i, prompt in enumerate(p.all_prompts)]
        p.extra_generation_params["Prefixer"] = word
        p.extra_generation_params["Prefixer clip skip"] = shared.opts.CLIP_stop_at_last_layers

    def postprocess(self, p, processed, enabled, word):
        EVENTS.append(("postprocess", len(processed.images)))


class Saver(scripts.Script):
    """A selectable A1111 script: process_images, images.save_image, a Processed built by hand."""

    def title(self):
        return "Saver"

    def ui(self, is_img2img):
        return [gr.Textbox(value="", label="Folder")]

    def run(self, p, folder):
        p.n_iter = 1
        proc = process_images(p)
        path, txt = images.save_image(proc.images[0], folder, "saved", seed=proc.seed, info=proc.infotexts[0], p=p)
        EVENTS.append(("saved", path, txt))
        return Processed(p, proc.images, proc.seed, proc.info, infotexts=proc.infotexts)


def on_started(demo, app):
    EVENTS.append(("app_started", demo, app is not None))


def on_ui_settings():
    section = ("prefixer", "Prefixer")
    shared.opts.add_option("prefixer_suffix", shared.OptionInfo("!", "Suffix after each prompt", section=section))
    shared.opts.add_option("prefixer_strength", shared.OptionInfo(
        0.5, "Strength", gr.Slider, {"minimum": 0.0, "maximum": 1.0, "step": 0.1}, section=section).info("unused"))


def on_saved(params):
    EVENTS.append(("image_saved", params.filename))


script_callbacks.on_app_started(on_started)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_image_saved(on_saved)
script_callbacks.on_before_component(lambda component, **kwargs: None)   # accepted, never called here
'''


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, checkpoints) -> Path:
    root = tmp_path_factory.mktemp("a1111-ext")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    (ckpts / "sd1.safetensors").symlink_to(checkpoints.path("sd1"))
    folder = root / "extensions" / "sd-webui-prefixer" / "scripts"
    folder.mkdir(parents=True)
    (folder / "prefixer.py").write_text(textwrap.dedent(A1111_EXTENSION), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def app(data_dir):
    args = build_parser().parse_args(["--data-dir", str(data_dir), "--ckpt",
                                      str(data_dir / "models" / "Stable-diffusion" / "sd1.safetensors")])
    app = App.create(args)
    app.extensions.app_started(None)   # what the server does once it is assembled (None: no HTTP server)
    yield app
    app.queue.shutdown()


def ext_module(app: App):
    return next(m for key, m in app.extensions.modules.items() if key.endswith("prefixer"))


def run(app: App, scripts: ScriptSelection, **fields):
    job = app.submit("txt2img", GenerationParams(**{**SMALL, "prompt": "a red circle", **fields}), save=False,
                     scripts=scripts)
    assert job.wait(300)
    assert job.status is JobStatus.DONE, job.error
    return job.result


def test_a1111_extension_loads_without_errors(app, data_dir):
    assert not [e for e in app.extensions.errors if e.extension == "sd-webui-prefixer"], app.extensions.errors
    runner = app.extensions.runner("txt2img")
    assert "Saver" in runner.titles()
    assert "Prefixer" in [app.extensions.title_of(s) for s in runner.alwayson_scripts]
    assert Path(ext_module(app).BASEDIR) == (data_dir / "extensions" / "sd-webui-prefixer").resolve()


def test_on_app_started_ran(app):
    assert ("app_started", None, False) in ext_module(app).EVENTS


def test_options_from_on_ui_settings_persist(app, data_dir):
    option = app.settings.options["prefixer_suffix"]
    assert option.default == "!" and option.section == "Prefixer"
    strength = app.settings.options["prefixer_strength"]
    assert strength.kind is float and (strength.minimum, strength.maximum) == (0.0, 1.0)
    from modules import shared
    assert shared.opts.prefixer_strength == 0.5
    shared.opts.prefixer_strength = 0.7
    assert app.settings.get("prefixer_strength") == 0.7
    assert json.loads((data_dir / "config.json").read_text())["prefixer_strength"] == 0.7
    assert "prefixer_suffix" in shared.opts.data
    assert Path(shared.cmd_opts.data_dir) == data_dir and shared.cmd_opts.medvram is False
    with pytest.raises(AttributeError):
        shared.opts.no_such_setting


def test_process_changes_prompts_and_infotext(app):
    events = ext_module(app).EVENTS
    events.clear()
    app.settings.update({"prefixer_suffix": "?"})
    result = run(app, ScriptSelection(alwayson={"Prefixer": [True, "glossy"]}), batch_size=2, n_iter=2)
    parsed = [parse_infotext(t) for t in result.infotexts]
    assert [p["Prompt"] for p in parsed] == [f"glossy a red circle? {i}" for i in range(4)]
    assert result.prompts == [f"glossy a red circle? {i}" for i in range(4)]
    assert all(p["Prefixer"] == "glossy" and p["Prefixer clip skip"] == "1" for p in parsed)
    assert result.info["extra_generation_params"]["Prefixer"] == "glossy"
    process = next(e for e in events if e[0] == "process")
    assert process == ("process", True, False, "?", False, [100, 101, 102, 103])
    assert ("postprocess", 4) in events


def test_alwayson_default_args_leave_the_job_alone(app):
    result = run(app, ScriptSelection())
    assert parse_infotext(result.infotexts[0])["Prompt"] == "a red circle"
    assert "Prefixer" not in parse_infotext(result.infotexts[0])


def test_selectable_script_saves_through_images_save_image(app, tmp_path):
    events = ext_module(app).EVENTS
    events.clear()
    result = run(app, ScriptSelection("Saver", [str(tmp_path / "saved")]), n_iter=3)
    assert len(result.images) == 1
    saved = next(e for e in events if e[0] == "saved")
    path = Path(saved[1])
    assert path.parent == tmp_path / "saved" and path.name == "00000-saved-100.png" and saved[2] is None
    assert ("image_saved", str(path)) in events
    with Image.open(path) as im:
        assert parse_infotext(read_image_infotext(im))["Seed"] == "100"


def test_shim_outside_extension_code_uses_the_app_seen_last(app, data_dir):
    from modules import paths, processing, scripts, shared

    assert paths.models_path == str(data_dir / "models") and paths.data_path == str(data_dir)

    assert shared.opts.prefixer_suffix == app.settings.get("prefixer_suffix")
    assert shared.sd_model is app.engine.models.current
    assert shared.state.interrupted is False and shared.state.job_count == 0
    shared.state.job_count = 5                      # A1111 scripts write it; accepted
    assert scripts.basedir()                       # the repo root outside extension code
    assert "Saver" in scripts.scripts_txt2img.titles()
    assert processing.get_fixed_seed(7) == 7 and 0 <= processing.get_fixed_seed(-1) < 2**32
    p = processing.StableDiffusionProcessingImg2Img(prompt=["a", "b"], init_images=[], outpath_samples="x")
    assert isinstance(p, processing.StableDiffusionProcessingImg2Img)
    assert not isinstance(p, processing.StableDiffusionProcessingTxt2Img)
    assert p.prompt == "a" and p.all_prompts == ["a", "b"] and p.outpath_samples == "x"


def test_process_images_outside_a_job_queues_one(app):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a blue square", steps=2, width=64, height=64,
                                                    seed=9, sampler_name="Euler", sd_model=None)
    processed = processing.process_images(p)
    assert len(processed.images) == 1 and processed.seed == 9
    assert parse_infotext(processed.infotexts[0])["Prompt"] == "a blue square"
