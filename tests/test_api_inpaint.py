"""Inpainting, hires fix, refiner and depth fields of the /sdapi/v1 API, over HTTP against the real server."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_server import client, data_dir_with, server  # noqa: F401  (shared module fixtures)
from webui.engine.infotext import parse_infotext

SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "seed": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return data_dir_with(tmp_path_factory.mktemp("api-inpaint"), ("a", "sd1", 0), ("b", "sd1", 1),
                         ("depth", "sd2-depth", 0))




def encode(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def picture(w: int = 64, h: int = 64) -> Image.Image:
    return Image.fromarray((np.random.RandomState(1).rand(h, w, 3) * 255).astype(np.uint8))


def square_mask(size=(64, 64), box=(16, 16, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def field_error(response: httpx.Response, field: str, text: str = "") -> dict:
    assert response.status_code == 422, response.text
    body = response.json()
    locs = [".".join(str(p) for p in d["loc"][1:]) for d in body["detail"]]
    assert field in locs, body
    assert text in body["errors"], body
    return body


def inpaint(client, **fields) -> httpx.Response:
    body = {**SMALL, "init_images": [encode(picture())], "mask": encode(square_mask()), "mask_blur": 0,
            "inpaint_full_res": False, **fields}
    return client.post("/sdapi/v1/img2img", json=body)


def test_img2img_with_a_mask_inpaints_only_the_mask(client):
    result = ok(inpaint(client, inpainting_fill=1))
    info = json.loads(result["info"])
    assert "ignored_fields" not in info
    image = decode(result["images"][0])
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(picture(), np.int16)).max(-1) > 0
    mask = np.asarray(square_mask()) > 0
    assert not diff[~mask].any() and diff[mask].mean() > 0.9
    parsed = parse_infotext(image.info["parameters"])
    assert (parsed["Mask blur"], parsed["Inpaint area"], parsed["Masked content"]) == ("0", "Whole picture", "original")
    assert result["parameters"]["mask"] is None


def test_api_inpaint_defaults_are_a1111s(client):
    body = {**SMALL, "init_images": [encode(picture(96, 96))], "mask": encode(square_mask((96, 96)))}
    image = decode(ok(client.post("/sdapi/v1/img2img", json=body))["images"][0])
    parsed = parse_infotext(image.info["parameters"])
    assert image.size == (96, 96)       # only masked: pasted back into the original
    assert (parsed["Inpaint area"], parsed["Masked area padding"], parsed["Masked content"], parsed["Mask blur"]) \
        == ("Only masked", "0", "fill", "4")


def test_alpha_mask_and_invert(client):
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (16, 16, 40, 40))
    plain = decode(ok(inpaint(client, inpainting_fill=1))["images"][0])
    alpha = decode(ok(inpaint(client, inpainting_fill=1, mask=encode(strokes)))["images"][0])
    assert plain.tobytes() == alpha.tobytes()
    inverted = decode(ok(inpaint(client, inpainting_fill=1, inpainting_mask_invert=1))["images"][0])
    diff = np.abs(np.asarray(inverted, np.int16) - np.asarray(picture(), np.int16)).max(-1) > 0
    assert not diff[16:40, 16:40].any() and diff[:16].mean() > 0.9


@pytest.mark.parametrize("fields, field, text", [
    ({"mask": encode(square_mask((64, 48)))}, "mask", "same size"),
    ({"mask": encode(Image.new("L", (64, 64), 0))}, "mask", "empty"),
    ({"mask": "@@not base64@@"}, "mask", "mask"),
    ({"inpainting_fill": 9}, "inpainting_fill", "inpainting_fill"),
    ({"mask_blur": -1}, "mask_blur_x", "mask_blur_x"),
    ({"depth_map": encode(square_mask())}, "depth_map", "not a depth model"),
])
def test_bad_inpaint_fields_get_422(client, fields, field, text):
    field_error(inpaint(client, **fields), field, text)


def test_txt2img_hires_fix(client):
    result = ok(client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5,
                                                        "hr_second_pass_steps": 2, "denoising_strength": 0.5,
                                                        "hr_upscaler": "Latent (nearest)"}))
    info = json.loads(result["info"])
    assert "ignored_fields" not in info and info["denoising_strength"] == 0.5
    image = decode(result["images"][0])
    parsed = parse_infotext(image.info["parameters"])
    assert image.size == (96, 96) and parsed["Size-1"] == "64"
    assert (parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"]) == ("1.5", "2", "Latent (nearest)")
    again = ok(client.post("/sdapi/v1/txt2img", json={"infotext": image.info["parameters"]}))
    assert decode(again["images"][0]).tobytes() == image.tobytes()    # the infotext alone reproduces it


def test_refiner_and_hires_checkpoint(client):
    result = ok(client.post("/sdapi/v1/txt2img", json={**SMALL, "refiner_checkpoint": "b", "refiner_switch_at": 0.5}))
    parsed = parse_infotext(decode(result["images"][0]).info["parameters"])
    assert parsed["Refiner"].startswith("b [") and parsed["Refiner switch at"] == "0.5"
    hires = ok(client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.25,
                                                       "hr_checkpoint_name": "b.safetensors", "denoising_strength": 0.4}))
    assert "Hires checkpoint: b [" in decode(hires["images"][0]).info["parameters"]
    assert json.loads(hires["info"])["sd_model_name"] == "a"


@pytest.mark.parametrize("fields, field", [
    ({"enable_hr": True, "hr_upscaler": "ESRGAN_9x"}, "hr_upscaler"),
    ({"enable_hr": True, "hr_scale": 20}, "hr_scale"),
    ({"enable_hr": True, "hr_sampler_name": "Nope"}, "hr_sampler_name"),
    ({"enable_hr": True, "hr_checkpoint_name": "nope"}, "hr_checkpoint_name"),
    ({"refiner_checkpoint": "nope"}, "refiner_checkpoint"),
    ({"refiner_checkpoint": "b", "refiner_switch_at": 3}, "refiner_switch_at"),
])
def test_bad_hires_and_refiner_fields_get_422(client, fields, field):
    field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **fields}), field)


def test_depth_model_without_estimator_gets_a_clear_422_and_uses_an_uploaded_map(client):
    ok(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "depth"}))
    try:
        body = {**SMALL, "init_images": [encode(picture())]}
        field_error(client.post("/sdapi/v1/img2img", json=body), "depth_map", "upload a depth map")
        gradient = Image.linear_gradient("L").resize((64, 64))
        a = ok(client.post("/sdapi/v1/img2img", json={**body, "depth_map": encode(gradient)}))
        b = ok(client.post("/sdapi/v1/img2img", json={**body, "depth_map": encode(gradient.rotate(90))}))
        assert a["images"][0] != b["images"][0]
        assert a["parameters"]["depth_map"] is None
    finally:
        ok(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a"}))


def test_outpainting_script_over_http(client):
    source = picture()
    body = {**SMALL, "init_images": [encode(source)], "script_name": "Outpainting",
            "script_args": [16, 0, 1, ["right", "down"]]}   # pixels, mask blur, masked content "original", directions
    result = ok(client.post("/sdapi/v1/img2img", json=body))
    image = decode(result["images"][0])
    assert image.size == (80, 80)
    kept = np.asarray(image.convert("RGB"))[:64, :64].astype(int)
    assert np.abs(kept - np.asarray(source.convert("RGB")).astype(int)).max() <= 2   # the original area is kept
    field_error(client.post("/sdapi/v1/img2img", json={**body, "script_name": "Outpainting mk2"}), "script_name",
                "no script named")
