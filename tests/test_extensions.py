"""The extension system's core: scripts, callbacks, samplers, isolation — with extensions written to disk and
loaded the real way (App.create → ExtensionHost), generating on the SD1 fixture, in-process and over HTTP."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.api_server import start_server
from webui.app import App
from webui.cli import build_parser
from webui.engine.infotext import parse_infotext, read_image_infotext
from webui.engine.params import GenerationParams
from webui.extensions.scripts import ScriptSelection
from webui.services.job_queue import JobStatus

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(steps=3, width=64, height=64, seed=100, sampler_name="Euler", cfg_scale=5.0)

# ---- example extensions ----------------------------------------------------------------------------

TAGGER = '''
from webui.extensions_api import (AlwaysVisible, Script, on_app_started, on_before_image_saved, on_image_saved,
                                  on_infotext_pasted, on_model_loaded, on_ui_settings)

EVENTS = []


class Tagger(Script):
    """Always on: numbers every prompt, records hook order, stamps an infotext field."""

    def title(self):
        return "Tagger"

    def show(self, is_img2img):
        return AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Textbox(value="tag", label="Tag"), gr.Checkbox(value=False, label="Paint red")]

    def setup(self, p, tag, red):
        EVENTS.append(("setup", tag))

    def before_process(self, p, tag, red):
        EVENTS.append(("before_process", tag))

    def process(self, p, tag, red):
        EVENTS.append(("process", tag, list(p.all_seeds)))
        p.all_prompts = [f"{prompt} #{i}" for i, prompt in enumerate(p.all_prompts)]
        p.extra_generation_params["Tagger"] = tag

    def before_process_batch(self, p, tag, red, batch_number, prompts, seeds, subseeds):
        EVENTS.append(("before_process_batch", batch_number, list(prompts)))
        p.seeds = [s + 1000 for s in seeds]

    def process_batch(self, p, tag, red, batch_number, prompts, seeds, subseeds):
        EVENTS.append(("process_batch", batch_number, list(seeds)))

    def postprocess_batch(self, p, tag, red, images, batch_number):
        EVENTS.append(("postprocess_batch", batch_number, len(images)))

    def postprocess_image(self, p, pp, tag, red):
        EVENTS.append(("postprocess_image", p.batch_index))
        if red:
            pp.image = Image.new("RGB", pp.image.size, (255, 0, 0))

    def postprocess(self, p, processed, tag, red):
        EVENTS.append(("postprocess", len(processed.images)))


from PIL import Image   # noqa: E402  (used above at call time)


def _started(app, server):
    EVENTS.append(("app_started", type(app).__name__, server is not None))
    if server is not None:
        server.add_api_route("/tagger/ping", lambda: {"pong": True}, methods=["GET"])


def _settings(settings):
    settings.add_option("tagger_suffix", "!", "Suffix the tagger adds to saved infotexts", section="Tagger")


def _before_saved(params):
    params.pnginfo["parameters"] = (params.pnginfo["parameters"] or "") + " " + params.p.settings_suffix


def _saved(params):
    EVENTS.append(("image_saved", params.filename))


on_app_started(_started)
on_ui_settings(_settings)
on_model_loaded(lambda model: EVENTS.append(("model_loaded", model.name)))
on_before_image_saved(_before_saved)
on_image_saved(_saved)
on_infotext_pasted(lambda text, params: params.update({"Tagger pasted": "Steps" in params}))
'''

# `settings_suffix` does not exist on p: the tagger's before_image_saved fails on the first save. That is
# deliberate — it proves a failing callback disables only its own extension.

GRIDDER = '''
from webui.extensions_api import Processed, Script, image_grid, process_images


class Twice(Script):
    """Selectable: the job twice with two seeds, plus a grid in front (index_of_first_image = 1)."""

    def title(self):
        return "Twice"

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Number(value=7, label="Second seed", precision=0)]

    def run(self, p, second_seed):
        first = process_images(p.copy())
        q = p.copy()
        q.seed = int(second_seed)
        second = process_images(q)
        images = first.images + second.images
        grid = image_grid(images, cols=2)
        return Processed(p, [grid] + images, seed=first.seed, info=first.info,
                         all_seeds=first.all_seeds + second.all_seeds,
                         all_prompts=first.all_prompts + second.all_prompts,
                         infotexts=[first.info] + first.infotexts + second.infotexts, index_of_first_image=1)
'''

SAMPLERS = '''
from webui.extensions_api import on_cfg_after_cfg, on_cfg_denoiser, register_sampler, register_schedule
import torch

CALLS = {"sampler": 0, "denoiser": []}


def sample_plain_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, scale=1.0):
    CALLS["sampler"] += 1
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i]) * scale
    return x


def linear(n, sigma_min, sigma_max, schedule, **opts):
    return torch.cat([torch.linspace(sigma_max, sigma_min, n), torch.zeros(1)])


register_sampler("Plain Euler", sample_plain_euler, aliases=["plain_euler"])
register_schedule("linear_test", "Linear test", linear)


def _zero_after_cfg(params):
    # only when a job asks for it (prompt contains "zero"), so other tests are unaffected
    if params.total_sampling_steps == 4:
        params.x = torch.zeros_like(params.x)


def _record(params):
    CALLS["denoiser"].append((params.sampling_step, params.total_sampling_steps, tuple(params.x.shape)))


on_cfg_denoiser(_record)
on_cfg_after_cfg(_zero_after_cfg)
'''

BROKEN_IMPORT = '''
raise RuntimeError("broken on purpose at import")
'''

BROKEN_HOOK = '''
from webui.extensions_api import AlwaysVisible, Script, on_cfg_denoised

CALLS = {"process": 0, "denoised": 0}


class Crasher(Script):
    def title(self):
        return "Crasher"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, p, *args):
        CALLS["process"] += 1
        raise ValueError("broken on purpose in process")


def _denoised(params):
    CALLS["denoised"] += 1
    raise KeyError("broken on purpose in cfg_denoised")


on_cfg_denoised(_denoised)
'''

BROKEN_RUN = '''
from webui.extensions_api import Script


class Exploder(Script):
    def title(self):
        return "Exploder"

    def run(self, p, *args):
        raise RuntimeError("run exploded")
'''

EXTENSIONS = {"tagger": TAGGER, "gridder": GRIDDER, "samplers": SAMPLERS, "zz-broken-import": BROKEN_IMPORT,
              "zz-broken-hook": BROKEN_HOOK, "zz-broken-run": BROKEN_RUN}


def write_extensions(root: Path, sources: dict[str, str]) -> None:
    for name, source in sources.items():
        folder = root / "extensions" / name / "scripts"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def make_app(root: Path, ckpt: Path) -> App:
    args = build_parser().parse_args(["--data-dir", str(root), "--ckpt", str(ckpt)])
    return App.create(args)


def run(app: App, kind: str = "txt2img", scripts: ScriptSelection | None = None, save: bool = False, **fields):
    params = GenerationParams(**{**SMALL, "prompt": "a red circle", **fields})
    job = app.submit(kind, params, save=save, scripts=scripts)
    assert job.wait(300)
    return job


def module(app: App, name: str):
    return next(m for key, m in app.extensions.modules.items() if key.endswith(name))


# ---- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, checkpoints) -> Path:
    root = tmp_path_factory.mktemp("ext-data")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    (ckpts / "sd1.safetensors").symlink_to(checkpoints.path("sd1"))
    write_extensions(root, EXTENSIONS)
    return root


@pytest.fixture(scope="module")
def app(data_dir):
    app = make_app(data_dir, data_dir / "models" / "Stable-diffusion" / "sd1.safetensors")
    yield app
    app.queue.shutdown()


# ---- loading, isolation at import ------------------------------------------------------------------

def test_scripts_load_and_a_broken_import_is_recorded(app):
    host = app.extensions
    txt = host.runner("txt2img")
    assert {"Twice", "Exploder"} <= set(txt.titles())
    assert "Tagger" in [host.title_of(s) for s in txt.alwayson_scripts]
    errors = {(e.extension, e.where) for e in host.errors}
    assert ("zz-broken-import", "import") in errors
    record = next(e for e in host.errors if e.extension == "zz-broken-import")
    assert "broken on purpose at import" in record.traceback and record.script == "zz_broken_import.py"
    assert "zz-broken-import" in host.disabled


def test_module_level_calls_bind_to_the_loading_host(app, data_dir):
    from webui import extensions_api as api

    with pytest.raises(RuntimeError, match="only works while the extension host"):
        api.on_app_started(lambda app, server: None)
    owners = {c.extension for c in app.extensions.callbacks.entries("model_loaded")}
    assert owners == {"tagger"}
    # a second app over the same folder has its own registry: nothing leaks between hosts
    other = make_app(data_dir, data_dir / "models" / "Stable-diffusion" / "sd1.safetensors")
    try:
        assert other.extensions.callbacks is not app.extensions.callbacks
        assert len(other.extensions.callbacks.entries("model_loaded")) == 1
        assert module(other, "tagger_tagger") is not module(app, "tagger_tagger")
    finally:
        other.queue.shutdown()


def test_model_loaded_and_settings_callbacks(app, data_dir):
    events = module(app, "tagger_tagger").EVENTS
    assert ("model_loaded", "sd1.safetensors") in events
    option = app.settings.options["tagger_suffix"]
    assert option.section == "Tagger" and option.default == "!"
    app.settings.update({"tagger_suffix": "?!"})
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["tagger_suffix"] == "?!"


# ---- the script lifecycle ---------------------------------------------------------------------------

def test_alwayson_hooks_change_prompts_seeds_and_infotext(app):
    events = module(app, "tagger_tagger").EVENTS
    events.clear()
    job = run(app, batch_size=2, n_iter=2, scripts=ScriptSelection(alwayson={"tagger": ["blue"]}))
    assert job.status is JobStatus.DONE, job.error
    result = job.result
    assert len(result.images) == 4
    parsed = [parse_infotext(t) for t in result.infotexts]
    assert [p["Prompt"] for p in parsed] == [f"a red circle #{i}" for i in range(4)]
    assert all(p["Tagger"] == "blue" for p in parsed)
    # before_process_batch moved every seed by 1000; the infotext and the result say so
    assert [int(p["Seed"]) for p in parsed] == [1100, 1101, 1102, 1103]
    assert result.seeds == [1100, 1101, 1102, 1103]
    assert result.info["extra_generation_params"]["Tagger"] == "blue"
    names = [e[0] for e in events]
    assert names[:3] == ["setup", "before_process", "process"]
    assert names[3:8] == ["before_process_batch", "process_batch", "postprocess_batch", "postprocess_image",
                          "postprocess_image"]
    assert names[-1] == "postprocess" and events[-1] == ("postprocess", 4)
    assert ("process_batch", 1, [1102, 1103]) in events
    assert ("before_process_batch", 1, ["a red circle #2", "a red circle #3"]) in events


def test_default_script_args_come_from_ui(app):
    events = module(app, "tagger_tagger").EVENTS
    events.clear()
    job = run(app)   # no alwayson args given: the ui() defaults ("tag", False)
    assert job.status is JobStatus.DONE, job.error
    assert ("setup", "tag") in events
    assert parse_infotext(job.result.infotexts[0])["Tagger"] == "tag"


def test_postprocess_image_replaces_pixels(app):
    job = run(app, scripts=ScriptSelection(alwayson={"Tagger": ["x", True]}))
    assert job.status is JobStatus.DONE, job.error
    pixels = np.asarray(job.result.images[0])
    assert (pixels == [255, 0, 0]).all()
    assert parse_infotext(job.result.infotexts[0])["Tagger"] == "x"


def test_selectable_script_runs_process_images_twice_with_a_grid(app):
    job = run(app, scripts=ScriptSelection("twice", [9]))
    assert job.status is JobStatus.DONE, job.error
    result = job.result
    assert len(result.images) == 3
    assert result.images[0].size == (128, 64)   # grid of two 64x64 images
    assert result.info["index_of_first_image"] == 1
    assert result.seeds[1:] == [1100, 1009]     # the tagger's +1000 applies in each process_images call
    assert int(parse_infotext(result.infotexts[2])["Seed"]) == 1009
    grid = np.asarray(result.images[0])
    assert (grid[:, :64] == np.asarray(result.images[1])).all()


# ---- samplers and the denoiser callbacks --------------------------------------------------------------

def test_registered_sampler_and_schedule_work_in_generation(app):
    samplers = module(app, "samplers_samplers")
    assert "Plain Euler" in app.engine.samplers.names()
    assert "Linear test" in app.engine.schedules.labels()
    before = samplers.CALLS["sampler"]
    job = run(app, sampler_name="plain_euler", scheduler="Linear test")
    assert job.status is JobStatus.DONE, job.error
    assert samplers.CALLS["sampler"] == before + 1
    parsed = parse_infotext(job.result.infotexts[0])
    assert parsed["Sampler"] == "Plain Euler" and parsed["Schedule type"] == "Linear test"
    # the same sampler math as the built-in Euler, so the pixels agree
    builtin = run(app, sampler_name="Euler", scheduler="Linear test")
    a, b = (np.asarray(j.result.images[0]).astype(int) for j in (job, builtin))
    assert np.abs(a - b).max() <= 1


def test_cfg_denoiser_sees_every_step(app):
    calls = module(app, "samplers_samplers").CALLS["denoiser"]
    calls.clear()
    job = run(app, steps=3, batch_size=2)
    assert job.status is JobStatus.DONE, job.error
    assert [c[0] for c in calls] == [0, 1, 2]
    assert all(c[1] == 3 and c[2][:2] == (2, 4) for c in calls)


def test_cfg_after_cfg_can_replace_the_denoised_result(app):
    from webui.engine.image_ops import tensor_to_pil
    from webui.engine.processing import _latent_scale, decode_latents

    job = run(app, steps=4)   # the example zeroes the guided prediction in 4-step jobs
    assert job.status is JobStatus.DONE, job.error
    model = app.engine.models.current
    side = 64 // _latent_scale(model)
    zero = tensor_to_pil(decode_latents(model, torch.zeros(1, 4, side, side)))[0]
    diff = np.abs(np.asarray(job.result.images[0]).astype(int) - np.asarray(zero).astype(int))
    assert diff.max() <= 1


# ---- isolation in hooks ---------------------------------------------------------------------------------

def test_failing_hooks_disable_only_their_extension(app):
    host = app.extensions
    crasher = module(app, "zz_broken_hook_zz_broken_hook")
    # earlier jobs already ran into the crasher; its first failure disabled it
    assert "zz-broken-hook" in host.disabled
    wheres = {e.where for e in host.errors if e.extension == "zz-broken-hook"}
    assert wheres & {"process", "callback cfg_denoised"}
    calls = dict(crasher.CALLS)
    job = run(app, scripts=ScriptSelection(alwayson={"tagger": ["still"]}))
    assert job.status is JobStatus.DONE, job.error
    assert crasher.CALLS == calls                           # never called again
    assert parse_infotext(job.result.infotexts[0])["Tagger"] == "still"   # the others keep working
    assert "Crasher" not in [host.title_of(s) for s in host.runner("txt2img").alwayson_scripts]


def test_a_failing_run_fails_the_job_then_the_script_is_gone(app):
    job = run(app, scripts=ScriptSelection("Exploder"))
    assert job.status is JobStatus.FAILED
    assert "zz-broken-run" in str(job.error) and "run exploded" in str(job.error)
    assert "Exploder" not in app.extensions.runner("txt2img").titles()
    assert run(app).status is JobStatus.DONE


def test_saving_fires_image_callbacks_and_a_failing_one_is_isolated(app):
    events = module(app, "tagger_tagger").EVENTS
    events.clear()
    job = run(app, save=True)
    assert job.status is JobStatus.DONE, job.error
    # the tagger's before_image_saved reads a missing attribute: recorded, the tagger disabled, image saved
    assert any(e.extension == "tagger" and e.where == "callback before_image_saved" for e in app.extensions.errors)
    saved = Path(job.result.info["saved_paths"][0])
    assert saved.is_file()
    assert read_image_infotext(Image.open(saved)) == job.result.infotexts[0]


def test_example_from_the_docs_loads_and_works(tmp_path, checkpoints):
    doc = (REPO / "docs" / "extensions.md").read_text(encoding="utf-8")
    source = re.search(r"<!-- example: scripts/hello\.py -->\s*```python\n(.*?)```", doc, re.S).group(1)
    write_extensions(tmp_path, {"hello": source})
    ckpt = tmp_path / "models" / "Stable-diffusion" / "sd1.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.symlink_to(checkpoints.path("sd1"))
    app = make_app(tmp_path, ckpt)
    try:
        assert not [e for e in app.extensions.errors if e.extension == "hello"]
        job = run(app, scripts=ScriptSelection(alwayson={"Hello": ["sunny", 1.0]}))
        assert job.status is JobStatus.DONE, job.error
        parsed = parse_infotext(job.result.infotexts[0])
        assert parsed["Prompt"] == "a red circle, sunny"
        assert parsed["Hello"] == "sunny"
        assert "hello_greeting" in app.settings.options
    finally:
        app.queue.shutdown()


# ---- the UI ------------------------------------------------------------------------------------------------

def test_ui_builds_script_controls_and_lists_registered_samplers(app):
    import gradio as gr

    from webui.ui import scripts_ui
    from webui.ui.blocks import build_ui

    demo = build_ui(app)
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    scripts = [d for d in dropdowns if d.elem_id == "txt2img_script_list"]
    assert scripts and "Twice" in [c[0] for c in scripts[0].choices]
    samplers = next(d for d in dropdowns if d.elem_id == "txt2img_sampling")
    assert "Plain Euler" in [c[0] for c in samplers.choices]
    with gr.Blocks():
        ui = scripts_ui.build(app, "txt2img")
    values = [c.value for c in ui.inputs()]
    values[0] = "Twice"
    selection = ui.selection(values)
    assert selection.name == "Twice" and selection.args == [7]


def test_pasting_infotext_in_the_ui_runs_infotext_pasted(app, monkeypatch):
    from webui.ui import send_to

    seen = []
    original = app.extensions.infotext_pasted
    monkeypatch.setattr(app.extensions, "infotext_pasted",
                        lambda text, params: seen.append(dict(params)) or original(text, params))
    tab = SimpleNamespace(name="txt2img", fields={}, field_names=["prompt", "steps"])
    updates = send_to.paste_updates(app, tab, "a fox\nSteps: 9, Seed: 3, Size: 64x64")
    assert seen and seen[0]["Steps"] == "9"
    assert updates[:2] == ["a fox", 9]


# ---- over HTTP ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(data_dir):
    server = start_server(data_dir, data_dir / "models" / "Stable-diffusion" / "sd1.safetensors")
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            yield client
    finally:
        server.stop()


def test_api_lists_scripts_and_samplers(api):
    scripts = api.get("/sdapi/v1/scripts").json()
    assert {"twice", "tagger"} <= set(scripts["txt2img"])
    info = {(i["name"], i["is_img2img"]): i for i in api.get("/sdapi/v1/script-info").json()}
    tagger = info[("tagger", False)]
    assert tagger["is_alwayson"] is True
    assert [a["label"] for a in tagger["args"]] == ["Tag", "Paint red"]
    assert tagger["args"][0]["value"] == "tag"
    assert "Plain Euler" in [s["name"] for s in api.get("/sdapi/v1/samplers").json()]
    assert api.get("/tagger/ping").json() == {"pong": True}   # a route added in on_app_started


def test_api_alwayson_scripts_and_script_name(api):
    body = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5, "batch_size": 2,
            "sampler_name": "Plain Euler", "alwayson_scripts": {"Tagger": {"args": ["api"]}}}
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_prompts"] == ["a cat #0", "a cat #1"]
    assert info["all_seeds"] == [1005, 1006]
    assert all("Tagger: api" in t and "Sampler: Plain Euler" in t for t in info["infotexts"])
    twice = api.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1, "script_name": "twice",
                                                  "script_args": [3]})
    assert twice.status_code == 200, twice.text
    assert len(twice.json()["images"]) == 3
    assert json.loads(twice.json()["info"])["index_of_first_image"] == 1
    pasted = api.post("/sdapi/v1/png-info", json={"image": twice.json()["images"][1]}).json()
    assert pasted["parameters"]["Tagger pasted"] is True     # on_infotext_pasted saw the parsed fields
    bad = api.post("/sdapi/v1/txt2img", json={**body, "script_name": "nope"})
    assert bad.status_code == 422 and "twice" in bad.text.lower()
    skipped = api.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1, "alwayson_scripts": {"nope": {"args": []}}})
    assert skipped.status_code == 200, skipped.text   # an always-on script this server lacks is reported, not fatal
    assert json.loads(skipped.json()["info"])["ignored_fields"] == ["alwayson_scripts"]


def test_unloading_fires_script_unloaded(tmp_path, checkpoints):
    write_extensions(tmp_path, {"closer": '''
        from pathlib import Path
        from webui.extensions_api import extension_dir, on_script_unloaded

        MARKER = Path(extension_dir()) / "unloaded.txt"
        on_script_unloaded(lambda: MARKER.write_text("bye"))
    '''})
    app = make_app(tmp_path, checkpoints.path("sd1"))
    try:
        assert not app.extensions.errors
        app.extensions.unload()   # what the server does when it stops
        assert (tmp_path / "extensions" / "closer" / "unloaded.txt").read_text() == "bye"
        assert not app.extensions.modules
    finally:
        app.queue.shutdown()
