"""The built-in scripts (extensions-builtin/), loaded by the real extension host and run on the SD1 fixtures:
X/Y/Z plot (seed × steps, checkpoint axis), prompt matrix, prompts from file, and Outpainting over the API."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.app import App
from webui.cli import build_parser
from webui.engine import grids
from webui.engine.infotext import parse_infotext
from webui.engine.params import GenerationParams
from webui.extensions.scripts import ScriptSelection
from webui.services.job_queue import JobStatus

SMALL = dict(steps=2, width=64, height=64, seed=100, sampler_name="Euler", cfg_scale=5.0)


@pytest.fixture(scope="module")
def app(tmp_path_factory, checkpoints):
    root = tmp_path_factory.mktemp("builtin-scripts")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    (ckpts / "sd1.safetensors").symlink_to(checkpoints.path("sd1"))
    (ckpts / "other.safetensors").symlink_to(checkpoints.path("sd1", name="sd1-other", seed=7))
    args = build_parser().parse_args(["--data-dir", str(root), "--ckpt", str(ckpts / "sd1.safetensors")])
    app = App.create(args)
    yield app
    app.queue.shutdown()


def run(app: App, name: str, args: list, kind: str = "txt2img", **fields):
    params = GenerationParams(**{**SMALL, "prompt": "a red circle", **fields})
    job = app.submit(kind, params, save=False, scripts=ScriptSelection(name, args))
    assert job.wait(300)
    return job


def done(job):
    assert job.status is JobStatus.DONE, job.error
    return job.result


def test_builtin_scripts_are_listed(app):
    txt = app.extensions.runner("txt2img").titles()
    img = app.extensions.runner("img2img").titles()
    assert {"X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox"} <= set(txt)
    assert "Outpainting" not in txt and {"Outpainting", "Poor man's outpainting"} <= set(img)
    assert not [e for e in app.extensions.errors if e.extension in ("xyz-grid", "prompt-matrix",
                                                                     "prompts-from-file", "outpainting")]


# ---- X/Y/Z plot --------------------------------------------------------------------------------------

def test_xyz_seed_by_steps(app):
    result = done(run(app, "X/Y/Z plot", ["Seed", "11, 12, 13", [], "Steps", "1-2", []]))
    assert result.info["index_of_first_image"] == 1
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 6 and all(c.size == (64, 64) for c in cells)
    pad_left, pad_top = grids.label_band_heights(grid, 64, 64, rows=2, cols=3)
    assert pad_left > 0 and pad_top > 0              # row labels on the left, column labels on top
    band = np.asarray(grid.crop((pad_left, 0, grid.width, pad_top)).convert("L"))
    assert (band < 128).sum() > 20                    # text was drawn in the label band
    # cells: X (seed) fastest, then Y (steps); each cell's infotext carries its own parameters
    parsed = [parse_infotext(t) for t in result.infotexts[1:]]
    assert [(int(p["Seed"]), int(p["Steps"])) for p in parsed] == [(11, 1), (12, 1), (13, 1), (11, 2), (12, 2), (13, 2)]
    assert result.seeds[1:] == [11, 12, 13, 11, 12, 13]
    # the grid pastes the cells unchanged below/right of the labels
    top_left = np.asarray(grid.crop((pad_left, pad_top, pad_left + 64, pad_top + 64)))
    assert np.array_equal(top_left, np.asarray(cells[0].convert("RGB")))
    bottom_right = np.asarray(grid.crop((pad_left + 128, pad_top + 64, pad_left + 192, pad_top + 128)))
    assert np.array_equal(bottom_right, np.asarray(cells[5].convert("RGB")))
    # the grid's infotext describes the plot, as A1111 writes it
    grid_info = parse_infotext(result.infotexts[0])
    assert grid_info["Script"] == "X/Y/Z plot"
    assert (grid_info["X Type"], grid_info["X Values"]) == ("Seed", "11, 12, 13")
    assert (grid_info["Y Type"], grid_info["Y Values"]) == ("Steps", "1-2")


def test_xyz_checkpoint_axis_switches_and_restores(app):
    assert app.engine.models.current.file.name == "sd1.safetensors"
    result = done(run(app, "X/Y/Z plot", ["CFG Scale", "3, 6", [], "Checkpoint name", "", ["sd1", "other"]]))
    parsed = [parse_infotext(t) for t in result.infotexts[1:]]
    assert [(p["Model"], float(p["CFG scale"])) for p in parsed] == [("sd1", 3.0), ("sd1", 6.0), ("other", 3.0),
                                                                    ("other", 6.0)]
    assert parsed[0]["Model hash"] != parsed[2]["Model hash"]
    a, b = (np.asarray(result.images[i], dtype=np.int16) for i in (1, 3))   # same seed and CFG, other model
    assert np.abs(a - b).mean() > 1
    assert app.engine.models.current.file.name == "sd1.safetensors"   # the original model is back


def test_xyz_options_sub_grids_and_no_lone_images(app):
    # x_type … z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    # vary_seeds_x/y/z, margin_size, csv_mode
    args = ["Steps", "1, 2", [], "Nothing", "", [], "CFG Scale", "2, 4", [], False, False, True, False,
            False, False, False, 4, False]
    result = done(run(app, "X/Y/Z plot", args))
    assert len(result.images) == 3                    # the plot and two sub-grids, no single images
    sub = result.images[1]
    assert sub.size == (2 * 64 + 4, 64)               # no legend: just the cells and the margin
    assert result.images[0].width == 2 * sub.width + 4


def test_xyz_bad_values_fail_the_job_but_not_the_script(app):
    job = run(app, "X/Y/Z plot", ["Sampler", "Euler, Nope", [], "Nothing", "", [], "Nothing", "", [], True,
                                  True, False, False, False, False, False, 0, True])
    assert job.status is JobStatus.FAILED and "Unknown sampler: Nope" in job.error
    assert "xyz-grid" not in app.extensions.disabled
    result = done(run(app, "X/Y/Z plot", ["Sampler", "", ["Euler", "Euler a"]]))
    assert [parse_infotext(t)["Sampler"] for t in result.infotexts[1:]] == ["Euler", "Euler a"]


# ---- prompt matrix -----------------------------------------------------------------------------------

def test_prompt_matrix(app):
    result = done(run(app, "Prompt matrix", [False, True], prompt="a circle|red|big"))
    prompts = [parse_infotext(t)["Prompt"] for t in result.infotexts[1:]]
    assert prompts == ["a circle", "a circle, red", "a circle, big", "a circle, red, big"]
    assert result.seeds[1:] == [100, 101, 102, 103]   # "different seed for each picture"
    grid = result.images[0]
    assert len(result.images) == 5
    pad_left, pad_top = grids.label_band_heights(grid, 64, 64, rows=2, cols=2)
    assert pad_left > 0 and pad_top > 0


def test_prompt_matrix_on_the_negative_prompt(app):
    result = done(run(app, "Prompt matrix", [True, False, "negative", "space"], negative_prompt="dark|blurry"))
    negatives = [parse_infotext(t).get("Negative prompt", "") for t in result.infotexts[1:]]
    assert negatives == ["dark", "blurry dark"]
    assert result.seeds[1:] == [100, 100]


# ---- prompts from file -------------------------------------------------------------------------------

def test_prompts_from_file_with_per_line_options(app):
    text = '\n'.join(["a blue square",
                      "",
                      '--prompt "a green circle" --negative_prompt "dark" --steps 3 --seed 5 --cfg_scale 4.5 '
                      '--sampler_name "euler a" --width 64 --height 96',
                      "--sd_model other --prompt a yellow star"])
    result = done(run(app, "Prompts from file or textbox", [False, False, "end", text], prompt="style"))
    parsed = [parse_infotext(t) for t in result.infotexts]
    assert len(result.images) == 3
    assert [p["Prompt"] for p in parsed] == ["style a blue square", "style a green circle", "style a yellow star"]
    assert parsed[1]["Negative prompt"] == "dark"
    assert (int(parsed[1]["Steps"]), int(parsed[1]["Seed"]), float(parsed[1]["CFG scale"])) == (3, 5, 4.5)
    assert parsed[1]["Sampler"] == "Euler a" and result.images[1].size == (64, 96)
    assert (int(parsed[0]["Steps"]), int(parsed[0]["Seed"])) == (2, 100)   # plain lines keep the request's values
    assert parsed[2]["Model"] == "other" and parsed[0]["Model"] == "sd1"
    assert app.engine.models.current.file.name == "sd1.safetensors"


def test_prompts_from_file_iterates_seeds(app):
    result = done(run(app, "Prompts from file or textbox", [True, False, "start", "one\ntwo\nthree"]))
    assert result.seeds == [100, 101, 102]
    assert [parse_infotext(t)["Prompt"] for t in result.infotexts] == ["one a red circle", "two a red circle",
                                                                      "three a red circle"]


# ---- outpainting through the API ---------------------------------------------------------------------

def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_outpainting_via_api_script_name(app):
    from webui.server import build_fastapi

    client = TestClient(build_fastapi(app, with_ui=False, with_api=True), base_url="http://127.0.0.1")
    listed = client.get("/sdapi/v1/scripts").json()
    assert "outpainting" in listed["img2img"] and "x/y/z plot" in listed["txt2img"]   # lower case, as A1111
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    body = {**SMALL, "prompt": "a red square", "init_images": [b64(source)], "denoising_strength": 0.8,
            "script_name": "outpainting", "script_args": [16, 0, 1, ["left", "down"]]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    out = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert out.size == (64 + 16, 64 + 16)
    # the original pixels stay where they were (right/top part), mask blur 0
    kept = np.asarray(out.convert("RGB"))[0:64, 16:80].astype(int)
    assert np.abs(kept - np.array([200, 30, 30])).mean() < 12
    bad = client.post("/sdapi/v1/img2img", json={**body, "script_args": [16, 0, 1, ["sideways"]]})
    assert bad.status_code in (400, 422, 500) and "sideways" in bad.text
