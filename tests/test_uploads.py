"""Uploaded images over the API: a pixel limit (setting img_max_pixels), decompression bombs and
non-images answered 4xx with a clear message, and a limit on the whole request body (max_request_mb)."""
from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.api_server import client, data_dir_with, server  # noqa: F401  (shared module fixtures)
from webui.api.limits import configure_pil_pixel_limit

SMALL = {"width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return data_dir_with(tmp_path_factory.mktemp("uploads"), ("a", "sd1", 0))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes that claim to be a width x height RGB PNG: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(4096), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# every route that takes an image, with the field that carries it
def _bodies(image: str) -> dict[str, tuple[str, dict]]:
    return {
        "png-info": ("/sdapi/v1/png-info", {"image": image}),
        "img2img": ("/sdapi/v1/img2img", {**SMALL, "init_images": [image]}),
        "img2img mask": ("/sdapi/v1/img2img", {**SMALL, "init_images": [b64(real_png(64, 64))], "mask": image}),
        "extras": ("/sdapi/v1/extra-single-image", {"image": image, "upscaling_resize": 1}),
        "extras batch": ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": image, "name": "x.png"}]}),
    }


BAD = {
    "bomb 30000x30000": (png_declaring(30000, 30000), "pixels"),
    "bomb 9000x9000 (81 MP > 64 MP)": (png_declaring(9000, 9000), "pixels"),
    "bomb 2^31 wide": (png_declaring(2**31 - 1, 1), "pixels"),
    "text": (b"this is plainly not an image", "not an image"),
    "html": (b"<html><script>alert(1)</script></html>", "not an image"),
    "truncated png": (real_png(64, 64)[:60], "damaged"),
    "png signature only": (b"\x89PNG\r\n\x1a\n", "image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_get_a_clear_4xx_on_every_route(client, case):
    data, words = BAD[case]
    for route, (path, body) in _bodies(b64(data)).items():
        response = client.post(path, json=body)
        assert 400 <= response.status_code < 500, (case, route, response.status_code, response.text[:300])
        errors = response.json()["errors"]
        assert words in errors, (case, route, errors)
    assert client.get("/healthz").status_code == 200


def test_pixel_limit_follows_the_setting(client):
    try:
        assert client.post("/sdapi/v1/options", json={"img_max_pixels": 1_000_000}).status_code == 200
        over = client.post("/sdapi/v1/png-info", json={"image": b64(real_png(1001, 1000))})
        errors = over.json()["errors"]
        assert over.status_code == 422 and "img_max_pixels" in errors and ("1001x1000" in errors or "1001000" in errors)
        assert client.post("/sdapi/v1/png-info", json={"image": b64(real_png(1000, 1000))}).status_code == 200
    finally:
        client.post("/sdapi/v1/options", json={"img_max_pixels": 64_000_000})
    assert client.post("/sdapi/v1/png-info", json={"image": b64(real_png(1001, 1000))}).status_code == 200


def test_request_body_limit(client):
    image = b64(real_png(64, 64))
    padding = "A" * 1_500_000   # a long prompt: 1.5 MB of JSON
    try:
        assert client.post("/sdapi/v1/options", json={"max_request_mb": 1}).status_code == 200
        too_big = client.post("/sdapi/v1/png-info", json={"image": image, "pad": padding})
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "RequestTooLarge" and "1 MB" in too_big.json()["errors"]

        def chunks():   # a body sent without Content-Length is counted as it arrives
            yield b'{"image": "' + image.encode() + b'", "pad": "'
            for _ in range(15):
                yield b"A" * 100_000
            yield b'"}'

        chunked = client.post("/sdapi/v1/png-info", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert client.post("/sdapi/v1/png-info", json={"image": image}).status_code == 200
    finally:
        client.post("/sdapi/v1/options", json={"max_request_mb": 50})
    assert client.post("/sdapi/v1/png-info", json={"image": image, "pad": padding}).status_code == 200


def test_pil_limit_guards_images_opened_outside_the_api(tmp_path):
    """Gradio's image components open uploads with Pillow; the server sets Pillow's limit to the setting."""
    old = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(9000, 9000))
    try:
        configure_pil_pixel_limit(64_000_000)
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)
        ok = tmp_path / "ok.png"
        ok.write_bytes(real_png(800, 600))
        with Image.open(ok) as im:
            im.load()
    finally:
        Image.MAX_IMAGE_PIXELS = old
