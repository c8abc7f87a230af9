"""The A1111-compatible API, driven over HTTP against the real server (`launch.py --nowebui`) on loopback."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.api_server import client, data_dir_with, server  # noqa: F401  (shared module fixtures)
from webui.engine.infotext import parse_infotext

SMALL = {"width": 64, "height": 64, "steps": 3}
INFO_KEYS = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
             "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
             "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
             "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
             "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
             "clip_skip", "is_using_inpainting_conditioning", "version"}


# ---- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = data_dir_with(tmp_path_factory.mktemp("api-data"), ("a", "sd1", 0), ("b", "sd1", 1))
    (root / "models" / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(64))
    return root




def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def txt2img(client: httpx.Client, **fields) -> dict:
    return ok(client.post("/sdapi/v1/txt2img", json={**SMALL, **fields}))


def info_of(result: dict) -> dict:
    return json.loads(result["info"])


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def encode(image: Image.Image, fmt: str = "PNG", pnginfo: PngImagePlugin.PngInfo | None = None) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, pnginfo=pnginfo)
    return base64.b64encode(buf.getvalue()).decode()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 80, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")


def task_state(client: httpx.Client, task_id: str) -> dict:
    return ok(client.post("/internal/progress", json={"id_task": task_id, "id_live_preview": -1}))


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def assert_field_error(response: httpx.Response, field: str) -> dict:
    assert response.status_code in (400, 422), response.text
    body = response.json()
    locs = [".".join(str(p) for p in d["loc"][1:]) for d in body["detail"]]
    assert any(loc == field or loc.startswith(field + ".") for loc in locs), body
    assert field in body["errors"]
    return body


# ---- generation ----------------------------------------------------------------------------------

def test_txt2img_images_infotext_and_info(client, data_dir):
    result = txt2img(client, prompt="a red, round ball", negative_prompt="blurry", seed=1000, width=64, height=72,
                     batch_size=2, n_iter=2)
    info = info_of(result)
    assert INFO_KEYS <= set(info)
    assert info["all_seeds"] == [1000, 1001, 1002, 1003] and info["seed"] == 1000
    assert info["sampler_name"] == "Euler"               # the API's default (sampler_index)
    assert info["sd_model_name"] == "a"
    assert info["sd_model_hash"] == sha256_of(data_dir / "models/Stable-diffusion/a.safetensors")[:10]
    assert (info["width"], info["height"], info["steps"]) == (64, 72, 3)
    assert len(result["images"]) == 4
    for i, b64 in enumerate(result["images"]):
        image = decode(b64)
        assert image.format == "PNG" and image.size == (64, 72)
        text = image.info["parameters"]
        assert text == info["infotexts"][i]
        parsed = parse_infotext(text)
        assert parsed["Seed"] == str(1000 + i)
        assert parsed["Prompt"] == "a red, round ball" and parsed["Negative prompt"] == "blurry"
        assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "72")
    params = result["parameters"]
    assert params["prompt"] == "a red, round ball" and params["steps"] == 3 and params["n_iter"] == 2
    assert params["sampler_index"] == "Euler" and params["save_images"] is False


def test_same_seed_same_pixels_and_random_seed(client):
    one = decode(txt2img(client, seed=42)["images"][0])
    two = decode(txt2img(client, seed=42)["images"][0])
    other = decode(txt2img(client, seed=43)["images"][0])
    assert np.array_equal(np.asarray(one), np.asarray(two))
    assert not np.array_equal(np.asarray(one), np.asarray(other))
    rand = info_of(txt2img(client, seed=-1))
    assert 0 <= rand["seed"] < 2**32


def test_sampler_index_and_combined_sampler_names(client):
    assert info_of(txt2img(client, sampler_index="Euler a", steps=2))["sampler_name"] == "Euler a"
    info = info_of(txt2img(client, sampler_name="DPM++ 2M Karras", steps=2))
    assert info["sampler_name"] == "DPM++ 2M"
    assert "Schedule type: Karras" in info["infotexts"][0]
    info = info_of(txt2img(client, sampler_name="k_euler", scheduler="Exponential", steps=2))
    assert info["sampler_name"] == "Euler" and "Schedule type: Exponential" in info["infotexts"][0]


def test_send_images_and_save_images(client, data_dir):
    outputs = data_dir / "outputs"
    before = sorted(outputs.rglob("*.png"))
    result = txt2img(client, send_images=False, steps=2)
    assert result["images"] == [] and info_of(result)["all_seeds"]
    assert sorted(outputs.rglob("*.png")) == before        # save_images defaults to False over the API
    info = info_of(txt2img(client, save_images=True, seed=7, steps=2))
    saved = [Path(p) for p in info["saved_paths"]]
    assert len(saved) == 1 and saved[0].is_file() and outputs in saved[0].parents
    with Image.open(saved[0]) as image:
        assert parse_infotext(image.info["parameters"])["Seed"] == "7"


def test_infotext_fills_fields_not_given(client):
    text = "a blue cube\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, CFG scale: 5.5, Seed: 77, Size: 64x64"
    info = info_of(txt2img(client, infotext=text, width=64, height=64, steps=3))
    assert info["prompt"] == "a blue cube" and info["negative_prompt"] == "fog"
    assert info["seed"] == 77 and info["cfg_scale"] == 5.5 and info["sampler_name"] == "Euler a"
    assert info["steps"] == 3                              # given explicitly: the request wins


def test_unsupported_fields_are_accepted_and_reported(client):
    result = txt2img(client, steps=2, restore_faces=True, styles=["cinematic"], some_future_field=1,
                     alwayson_scripts={"Dynamic Prompts": {"args": [True]}})
    assert set(info_of(result)["ignored_fields"]) == {"restore_faces", "styles", "some_future_field", "alwayson_scripts"}


def test_img2img(client):
    init = gradient(80, 48)
    result = ok(client.post("/sdapi/v1/img2img", json={
        **SMALL, "steps": 4, "seed": 5, "denoising_strength": 0.5, "resize_mode": 1,
        "init_images": ["data:image/png;base64," + encode(init)]}))
    info = info_of(result)
    image = decode(result["images"][0])
    assert image.size == (64, 64)
    assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in image.info["parameters"]
    assert result["parameters"]["init_images"] is None      # not echoed unless include_init_images
    # the result stays close to the init image at low strength (the fixture's VAE is random, so loosely)
    again = ok(client.post("/sdapi/v1/img2img", json={
        **SMALL, "steps": 4, "seed": 5, "denoising_strength": 0.5, "resize_mode": 1, "include_init_images": True,
        "init_images": [encode(init)]}))
    assert np.array_equal(np.asarray(decode(again["images"][0])), np.asarray(image))
    assert again["parameters"]["init_images"] == [encode(init)]


def test_img2img_several_init_images_set_the_batch(client):
    images = [encode(gradient(64, 64)), encode(gradient(64, 64).transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    result = ok(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": images, "batch_size": 4}))
    assert len(result["images"]) == 2 and info_of(result)["batch_size"] == 2
    assert_field_error(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": images * 2, "batch_size": 3}),
                       "init_images")


def test_samples_format_override_encodes_jpeg_with_exif_infotext(client):
    from webui.engine.infotext import read_image_infotext

    result = txt2img(client, steps=2, seed=9, override_settings={"samples_format": "jpg"})
    image = decode(result["images"][0])
    assert image.format == "JPEG" and image.size == (64, 64)
    assert parse_infotext(read_image_infotext(image))["Seed"] == "9"
    assert ok(client.get("/sdapi/v1/options"))["samples_format"] == "png"


def test_a_lone_surrogate_in_a_prompt_is_a_422(client):
    # JSON may escape a lone surrogate (found by fuzzing); no tokenizer can read it
    response = client.post("/sdapi/v1/txt2img", content=b'{"negative_prompt": "a \\ud800"}',
                           headers={"content-type": "application/json"})
    assert_field_error(response, "negative_prompt")


@pytest.mark.parametrize("route, body, field", [
    ("txt2img", {"steps": "abc"}, "steps"),
    ("txt2img", {"width": -64}, "width"),
    ("txt2img", {"height": 65}, "height"),
    ("txt2img", {"steps": 0}, "steps"),
    ("txt2img", {"seed": "x"}, "seed"),
    ("txt2img", {"cfg_scale": [1]}, "cfg_scale"),
    ("txt2img", {"batch_size": 0}, "batch_size"),
    ("txt2img", {"scheduler": "Wobbly"}, "scheduler"),
    ("txt2img", {"script_name": "no such script"}, "script_name"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 99}}, "override_settings.CLIP_stop_at_last_layers"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"sd_vae": "nope.pt"}}, "override_settings.sd_vae"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": __file__}}, "override_settings.sd_model_checkpoint"),
    ("img2img", {"init_images": ["@@not base64@@"]}, "init_images.0"),
    ("img2img", {"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "init_images.0"),
    ("img2img", {"init_images": []}, "init_images"),
    ("img2img", {"init_images": "notalist"}, "init_images"),
])
def test_bad_fields_get_422_naming_the_field(client, route, body, field):
    assert_field_error(client.post(f"/sdapi/v1/{route}", json={**SMALL, **body}), field)


def test_img2img_bad_denoising_strength_and_resize_mode(client):
    image = "data:image/png;base64," + encode(gradient(64, 64))
    assert_field_error(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [image],
                                                               "denoising_strength": 2}), "denoising_strength")
    assert_field_error(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [image], "resize_mode": 7}),
                       "resize_mode")


def test_unknown_sampler_lists_valid_names(client):
    body = assert_field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Nope"}), "sampler_name")
    assert "Euler a" in body["errors"] and "DPM++ 2M" in body["errors"]
    assert_field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_index": "Nope"}), "sampler_index")


def test_failed_job_answers_500_and_server_keeps_serving(client):
    response = client.post("/sdapi/v1/txt2img", json={
        **SMALL, "override_settings": {"sd_model_checkpoint": "broken.safetensors"}, "force_task_id": "task(bad)"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "GenerationError" and "broken.safetensors" in body["errors"]
    job = ok(client.get("/sdapi/v1/jobs/task(bad)"))
    assert job["status"] == "failed" and "broken.safetensors" in job["error"]
    assert info_of(txt2img(client, steps=2))["sd_model_name"] == "a"


# ---- progress, interrupt, queue ------------------------------------------------------------------

def test_progress_live_preview_and_interrupt(client):
    assert ok(client.get("/sdapi/v1/progress"))["state"]["job_count"] == 0
    thread, box = in_thread(lambda: client.post("/sdapi/v1/txt2img", json={
        **SMALL, "steps": 40, "seed": 11, "force_task_id": "task(int1)"}))
    progress = wait_until(lambda: (p := ok(client.get("/sdapi/v1/progress")))["state"]["sampling_step"] >= 2 and p,
                          what="sampling to start")
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["sampling_steps"] == 40 and progress["state"]["job_count"] == 1
    assert decode(progress["current_image"]).format == "PNG"
    assert ok(client.get("/sdapi/v1/progress", params={"skip_current_image": True}))["current_image"] is None
    task = task_state(client, "task(int1)")
    assert task["active"] and not task["queued"] and not task["completed"] and 0 < task["progress"] < 1
    assert task["live_preview"].startswith("data:image/png;base64,") and task["id_live_preview"] >= 1
    assert ok(client.post("/sdapi/v1/interrupt")) == {}
    thread.join(60)
    result = ok(box["result"])
    assert len(result["images"]) == 1 and decode(result["images"][0]).size == (64, 64)
    job = ok(client.get("/sdapi/v1/jobs/task(int1)"))
    assert job["status"] == "done" and job["step"] < 40
    done = task_state(client, "task(int1)")
    assert done["completed"] and not done["active"]
    assert task_state(client, "task(unknown)") == {**done, "completed": False, "textinfo": "Waiting..."}
    assert ok(client.get("/sdapi/v1/progress"))["progress"] == 0


def test_skip_moves_to_the_next_batch(client):
    thread, box = in_thread(lambda: client.post("/sdapi/v1/txt2img", json={
        **SMALL, "steps": 20, "n_iter": 2, "force_task_id": "task(skip1)"}))
    wait_until(lambda: task_state(client, "task(skip1)").get("progress") or 0, what="the job to start")
    assert ok(client.post("/sdapi/v1/skip")) == {}
    thread.join(60)
    result = ok(box["result"])
    assert len(result["images"]) == 2
    seed = info_of(result)["seed"]
    full = ok(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 20, "n_iter": 2, "seed": seed}))
    # the skipped batch stopped early, so its image differs from the same seed run to the end
    assert result["images"] != full["images"]
    assert sum(a != b for a, b in zip(result["images"], full["images"])) == 1


def test_concurrent_clients_run_in_fifo_order_each_with_its_own_result(client):
    specs = [("task(c1)", "first prompt", 101, 30), ("task(c2)", "second prompt", 202, 4),
             ("task(c3)", "third prompt", 303, 4)]
    threads = []
    for i, (task_id, prompt, seed, steps) in enumerate(specs):
        body = {**SMALL, "prompt": prompt, "seed": seed, "steps": steps, "force_task_id": task_id}
        threads.append(in_thread(lambda body=body: client.post("/sdapi/v1/txt2img", json=body)))
        wait_until(lambda: (s := task_state(client, task_id))["queued"] or s["active"] or s["completed"],
                   what=f"{task_id} to be queued")
    # while the first runs, each waiting client sees its own place in the queue
    assert task_state(client, "task(c1)")["active"]
    assert task_state(client, "task(c2)")["textinfo"] == "In queue: 1/2"
    assert task_state(client, "task(c3)")["textinfo"] == "In queue: 2/2"
    for (task_id, prompt, seed, _), (thread, box) in zip(specs, threads):
        thread.join(120)
        info = info_of(ok(box["result"]))
        assert info["prompt"] == prompt and info["seed"] == seed
    jobs = [ok(client.get(f"/sdapi/v1/jobs/{task_id}")) for task_id, *_ in specs]
    assert all(j["status"] == "done" for j in jobs)
    assert jobs[0]["finished"] <= jobs[1]["started"] and jobs[1]["finished"] <= jobs[2]["started"]


def test_queue_bound_503_and_cancel_of_a_queued_job(client):
    assert ok(client.post("/sdapi/v1/options", json={"queue_max_size": 1}))["updated"] == ["queue_max_size"]
    try:
        running, run_box = in_thread(lambda: client.post("/sdapi/v1/txt2img", json={
            **SMALL, "steps": 60, "force_task_id": "task(q1)"}))
        wait_until(lambda: task_state(client, "task(q1)")["active"], what="q1 to run")
        waiting, wait_box = in_thread(lambda: client.post("/sdapi/v1/txt2img", json={
            **SMALL, "steps": 2, "force_task_id": "task(q2)"}))
        wait_until(lambda: task_state(client, "task(q2)")["queued"], what="q2 to wait")
        full = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 2})
        assert full.status_code == 503 and "full" in full.json()["errors"]
        cancelled = ok(client.post("/sdapi/v1/jobs/task(q2)/cancel"))
        assert cancelled["status"] == "cancelled"
        waiting.join(30)
        assert wait_box["result"].status_code == 409
        assert ok(client.post("/sdapi/v1/jobs/task(q1)/interrupt"))["id"] == "task(q1)"
        running.join(60)
        assert len(ok(run_box["result"])["images"]) == 1
    finally:
        ok(client.post("/sdapi/v1/options", json={"queue_max_size": 32}))
    assert client.get("/sdapi/v1/jobs/task(nope)").status_code == 404
    assert client.post("/sdapi/v1/jobs/task(nope)/cancel").status_code == 404


# ---- settings and models -------------------------------------------------------------------------

def test_options_round_trip(client, data_dir):
    options = ok(client.get("/sdapi/v1/options"))
    titles = [m["title"] for m in ok(client.get("/sdapi/v1/sd-models"))]
    assert options["sd_model_checkpoint"] in titles and options["sd_model_checkpoint"].startswith("a.safetensors [")
    assert options["CLIP_stop_at_last_layers"] == 1 and options["samples_format"] == "png"
    echoed = ok(client.post("/sdapi/v1/options", json=options))
    assert echoed["ignored"] == ["sd_checkpoint_hash"]
    assert ok(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 3}))["updated"] == [
        "show_progress_every_n_steps"]
    assert ok(client.get("/sdapi/v1/options"))["show_progress_every_n_steps"] == 3
    assert json.loads((data_dir / "config.json").read_text())["show_progress_every_n_steps"] == 3
    assert_field_error(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": "often"}),
                       "show_progress_every_n_steps")
    body = assert_field_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}),
                              "sd_model_checkpoint")
    assert "a.safetensors" in body["errors"] and "b.safetensors" in body["errors"]
    ok(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1}))


def test_clip_skip_setting_reaches_generation(client):
    ok(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}))
    try:
        info = info_of(txt2img(client, steps=2))
        assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    finally:
        ok(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}))
    info = info_of(txt2img(client, steps=2, override_settings={"CLIP_stop_at_last_layers": 3}))
    assert info["clip_skip"] == 3
    assert ok(client.get("/sdapi/v1/options"))["CLIP_stop_at_last_layers"] == 1


def test_switch_model_with_options_and_override_settings(client, data_dir):
    sha_b = sha256_of(data_dir / "models/Stable-diffusion/b.safetensors")
    try:
        ok(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "b.safetensors"}))
        assert ok(client.get("/sdapi/v1/options"))["sd_model_checkpoint"] == f"b.safetensors [{sha_b[:10]}]"
        info = info_of(txt2img(client, steps=2))
        assert info["sd_model_name"] == "b" and info["sd_model_hash"] == sha_b[:10]
        models = {m["model_name"]: m for m in ok(client.get("/sdapi/v1/sd-models"))}
        assert models["b"]["sha256"] == sha_b and models["b"]["hash"] == sha_b[:10]
        # override for one job, restored afterwards (A1111's default)
        info = info_of(txt2img(client, steps=2, override_settings={"sd_model_checkpoint": "a"}))
        assert info["sd_model_name"] == "a"
        assert ok(client.get("/sdapi/v1/options"))["sd_model_checkpoint"].startswith("b.safetensors")
        assert info_of(txt2img(client, steps=2))["sd_model_name"] == "b"
        # ... by short hash, as A1111 allows
        sha_a = sha256_of(data_dir / "models/Stable-diffusion/a.safetensors")
        info = info_of(txt2img(client, steps=2, override_settings={"sd_model_checkpoint": sha_a[:10]}))
        assert info["sd_model_name"] == "a"
        # ... or kept
        txt2img(client, steps=2, override_settings={"sd_model_checkpoint": "a.safetensors"},
                override_settings_restore_afterwards=False)
        assert ok(client.get("/sdapi/v1/options"))["sd_model_checkpoint"].startswith("a.safetensors")
    finally:
        ok(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a.safetensors"}))
    assert info_of(txt2img(client, steps=2))["sd_model_name"] == "a"


def test_refresh_unload_and_reload_checkpoint(client, data_dir):
    ckpts = data_dir / "models" / "Stable-diffusion"
    shutil.copy(ckpts / "b.safetensors", ckpts / "c.safetensors")
    try:
        assert "c" not in [m["model_name"] for m in ok(client.get("/sdapi/v1/sd-models"))]
        assert ok(client.post("/sdapi/v1/refresh-checkpoints")) == {}
        assert "c" in [m["model_name"] for m in ok(client.get("/sdapi/v1/sd-models"))]
    finally:
        (ckpts / "c.safetensors").unlink()
        ok(client.post("/sdapi/v1/refresh-checkpoints"))
    for route in ("refresh-vae", "refresh-loras", "refresh-embeddings"):
        assert ok(client.post(f"/sdapi/v1/{route}")) == {}
    assert ok(client.post("/sdapi/v1/unload-checkpoint")) == {}
    assert info_of(txt2img(client, steps=2))["sd_model_name"] == "a"   # reloaded on demand
    assert ok(client.post("/sdapi/v1/unload-checkpoint")) == {}
    assert ok(client.post("/sdapi/v1/reload-checkpoint")) == {}
    assert ok(client.get("/sdapi/v1/options"))["sd_checkpoint_hash"] is not None


# ---- lists ---------------------------------------------------------------------------------------

def test_lists_have_a1111_shapes(client, data_dir):
    samplers = ok(client.get("/sdapi/v1/samplers"))
    by_name = {s["name"]: s for s in samplers}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(by_name)
    assert by_name["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert by_name["DPM++ 2M"]["options"]["scheduler"] == "karras"
    schedulers = {s["label"]: s for s in ok(client.get("/sdapi/v1/schedulers"))}
    assert set(schedulers["Karras"]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    assert schedulers["Karras"]["name"] == "karras" and schedulers["Karras"]["default_rho"] == 7.0
    assert schedulers["Automatic"]["name"] == "automatic"
    upscalers = [u["name"] for u in ok(client.get("/sdapi/v1/upscalers"))]
    assert {"None", "Lanczos", "Nearest"} <= set(upscalers)
    models = ok(client.get("/sdapi/v1/sd-models"))
    assert {m["model_name"] for m in models} == {"a", "b", "broken"}
    for m in models:
        assert set(m) == {"title", "model_name", "hash", "sha256", "filename", "config", "pickle"}   # + our flag
        assert m["pickle"] is False
        assert Path(m["filename"]).is_file()
    assert ok(client.get("/sdapi/v1/sd-vae")) == []
    assert ok(client.get("/sdapi/v1/loras")) == []
    assert ok(client.get("/sdapi/v1/embeddings")) == {"loaded": {}, "skipped": {}}
    builtin = {"prompt matrix", "prompts from file or textbox", "x/y/z plot"}   # extensions-builtin/
    scripts = ok(client.get("/sdapi/v1/scripts"))
    assert set(scripts["txt2img"]) == builtin and set(scripts["img2img"]) >= builtin | {"outpainting"}
    extensions = ok(client.get("/sdapi/v1/extensions"))
    assert extensions and all(e["enabled"] and set(e) >= {"name", "remote", "commit_hash"} for e in extensions)
    for route in ("prompt-styles", "latent-upscale-modes", "hypernetworks",
                  "face-restorers", "realesrgan-models"):
        assert ok(client.get(f"/sdapi/v1/{route}")) == []
    memory = ok(client.get("/sdapi/v1/memory"))
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0 and "cuda" in memory
    flags = ok(client.get("/sdapi/v1/cmd-flags"))
    assert flags["nowebui"] is True and flags["data_dir"] == str(data_dir)


def test_openapi_documents_every_route(client):
    assert client.get("/docs").status_code == 200
    spec = ok(client.get("/openapi.json"))
    paths = spec["paths"]
    expected = {
        "post": ["txt2img", "img2img", "extra-single-image", "extra-batch-images", "png-info", "interrupt", "skip",
                 "options", "refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings",
                 "unload-checkpoint", "reload-checkpoint", "jobs/{job_id}/interrupt", "jobs/{job_id}/cancel"],
        "get": ["progress", "options", "cmd-flags", "samplers", "schedulers", "upscalers", "latent-upscale-modes",
                "sd-models", "sd-vae", "loras", "embeddings", "prompt-styles", "scripts", "script-info",
                "extensions", "memory", "jobs/{job_id}"],
    }
    for method, routes in expected.items():
        for route in routes:
            assert method in paths.get(f"/sdapi/v1/{route}", {}), f"{method.upper()} /sdapi/v1/{route} not documented"
    assert "post" in paths["/internal/progress"]
    body = paths["/sdapi/v1/txt2img"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][body["$ref"].split("/")[-1]]
    assert {"prompt", "sampler_index", "force_task_id", "override_settings", "enable_hr"} <= set(schema["properties"])
    response = paths["/sdapi/v1/txt2img"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert response["$ref"].endswith("/GenerationResponse")


# ---- images --------------------------------------------------------------------------------------

def test_png_info_round_trip(client):
    result = txt2img(client, prompt="a cat: sitting, on a mat", negative_prompt="dog", seed=321, cfg_scale=6.5)
    expected = info_of(result)["infotexts"][0]
    answer = ok(client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + result["images"][0]}))
    assert answer["info"] == expected
    params = answer["parameters"]
    assert params["Prompt"] == "a cat: sitting, on a mat" and params["Negative prompt"] == "dog"
    assert (params["Seed"], params["Steps"], params["CFG scale"], params["Sampler"]) == ("321", "3", "6.5", "Euler")
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")
    plain = ok(client.post("/sdapi/v1/png-info", json={"image": encode(gradient(8, 8))}))
    assert plain["info"] == "" and plain["parameters"] == {}
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "x\nSteps: 5, Sampler: Euler, Seed: 9")
    meta.add_text("Software", "elsewhere")
    other = ok(client.post("/sdapi/v1/png-info", json={"image": encode(gradient(8, 8), pnginfo=meta)}))
    assert other["items"] == {"Software": "elsewhere"} and other["parameters"]["Seed"] == "9"
    assert_field_error(client.post("/sdapi/v1/png-info", json={"image": "%%%"}), "image")


def test_extras_single_image_nearest_and_lanczos(client):
    source = gradient(16, 8)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "kept\nSteps: 5, Sampler: Euler, Seed: 9")
    answer = ok(client.post("/sdapi/v1/extra-single-image", json={
        "image": encode(source, pnginfo=meta), "upscaler_1": "Nearest", "upscaling_resize": 2}))
    image = decode(answer["image"])
    expected = np.repeat(np.repeat(np.asarray(source), 2, axis=0), 2, axis=1)
    assert image.size == (32, 16) and np.array_equal(np.asarray(image.convert("RGB")), expected)
    assert image.info["parameters"].startswith("kept")
    assert image.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    assert "Postprocess upscaler: Nearest" in answer["html_info"]
    answer = ok(client.post("/sdapi/v1/extra-single-image", json={
        "image": encode(source), "resize_mode": 1, "upscaling_resize_w": 40, "upscaling_resize_h": 40,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5}))
    image = decode(answer["image"])
    assert image.size == (40, 40)
    assert "Postprocess upscaler 2: Nearest" in image.info["postprocessing"]
    assert_field_error(client.post("/sdapi/v1/extra-single-image", json={"image": encode(source),
                                                                         "upscaler_1": "ESRGAN_9x"}), "upscaler_1")
    assert_field_error(client.post("/sdapi/v1/extra-single-image", json={"image": "abc@", "upscaler_1": "Lanczos"}),
                       "image")
    assert_field_error(client.post("/sdapi/v1/extra-single-image", json={"image": encode(source),
                                                                         "upscaling_resize": 100}), "upscaling_resize")


def test_extras_batch_images(client):
    images = [gradient(8, 8), gradient(12, 4)]
    answer = ok(client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": encode(im), "name": f"{i}.png"} for i, im in enumerate(images)],
        "upscaler_1": "Lanczos", "upscaling_resize": 3}))
    assert [decode(b).size for b in answer["images"]] == [(24, 24), (36, 12)]
    assert_field_error(client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": encode(images[0])}, {"data": "nope!"}], "upscaler_1": "Lanczos"}), "imageList.1.data")
