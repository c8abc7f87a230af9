"""Faults during jobs: out-of-memory and NaN fail only their job (with a clear message, memory released),
interrupted jobs and crashed writes leave no partial files, settings survive failed writes and corrupt files.

Faults are injected into the real FastAPI app (`build_fastapi`, the API mounted) driven in-process by
Starlette's TestClient, so the monkeypatches reach the worker thread.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from webui.services import job_queue

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 77, "prompt": "a red circle", "sampler_name": "Euler"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(checkpoints, tmp_path_factory):
    from webui.app import App
    from webui.cli import build_parser
    from webui.server import build_fastapi

    ckpt = checkpoints.path("sd1")
    data = tmp_path_factory.mktemp("faults")
    args = build_parser().parse_args(["--data-dir", str(data), "--ckpt", str(ckpt), "--api"])
    app = App.create(args)
    server = build_fastapi(app, with_ui=False, with_api=True)
    with TestClient(server, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield app, client, data
    app.queue.shutdown()


def _unet(app):
    return app.engine.models.current.unet


class UnetFault:
    """Replace the UNet's forward so that its `at`-th call (1-based) misbehaves once."""

    def __init__(self, unet, at: int, action):
        self.unet, self.at, self.action, self.calls = unet, at, action, 0
        self.original = unet.forward

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            return self.action(self.original, *args, **kwargs)
        return self.original(*args, **kwargs)

    def __enter__(self):
        self.unet.forward = self
        return self

    def __exit__(self, *exc):
        del self.unet.forward   # back to the class's forward


def _generate(client, **fields):
    return client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})


def _pixels(response) -> bytes:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).tobytes()


@pytest.fixture
def memory_calls(monkeypatch):
    """Record gc.collect / torch.cuda.empty_cache calls made when a job fails (CUDA pretended present)."""
    calls = []
    monkeypatch.setattr(job_queue.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(job_queue.torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    import gc
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or real_collect(*a))
    return calls


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 8.00 GiB total capacity)"),
], ids=["OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_fails_only_that_job(served, memory_calls, monkeypatch, error):
    app, client, _ = served
    reference = _pixels(_generate(client))

    def raise_oom(original, *args, **kwargs):
        raise error

    with UnetFault(_unet(app), at=2, action=raise_oom):
        response = _generate(client, force_task_id=f"oom-{type(error).__name__}")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "GenerationError" and "out of memory" in body["errors"] and "smaller" in body["errors"]
    assert "gc" in memory_calls and "empty_cache" in memory_calls
    monkeypatch.undo()
    job = client.get(f"/sdapi/v1/jobs/oom-{type(error).__name__}").json()
    assert job["status"] == "failed" and "out of memory" in job["error"]
    assert _pixels(_generate(client)) == reference   # the next job runs, and nothing it uses was damaged


def test_nan_fails_only_that_job(served, memory_calls, monkeypatch):
    app, client, _ = served
    reference = _pixels(_generate(client))

    def nan_out(original, *args, **kwargs):
        out = original(*args, **kwargs)
        out.sample.fill_(float("nan"))
        return out

    with UnetFault(_unet(app), at=3, action=nan_out):
        response = _generate(client, force_task_id="nan-job")
    assert response.status_code == 500
    assert "NaN" in response.json()["errors"]
    assert "gc" in memory_calls and "empty_cache" in memory_calls
    monkeypatch.undo()
    job = client.get("/sdapi/v1/jobs/nan-job").json()
    assert job["status"] == "failed" and "NaN" in job["error"]
    assert _pixels(_generate(client)) == reference


def _saved_files(data: Path) -> list[Path]:
    return sorted(p for p in (data / "outputs").rglob("*") if p.is_file())


def test_interrupted_job_leaves_only_complete_images(served):
    app, client, data = served
    before = set(_saved_files(data))

    unet = _unet(app)

    def forward(*args, **kwargs):
        job = app.queue.current()
        if job.step > SMALL["steps"]:   # a step of the second batch (of three) has finished
            job.control.interrupted = True
        return type(unet).forward(unet, *args, **kwargs)

    unet.forward = forward
    try:
        response = _generate(client, n_iter=3, save_images=True)
    finally:
        del unet.forward
    assert response.status_code == 200, response.text
    returned = response.json()["images"]
    new = sorted(set(_saved_files(data)) - before)
    assert len(returned) == 2 and len(new) == 2, new   # the finished image and the interrupted batch's result
    for path in new:
        assert not path.name.startswith("."), f"temp file left behind: {path}"
        with Image.open(path) as im:
            im.load()
            assert im.size == (64, 64) and "parameters" in im.info


def test_failed_write_fails_the_job_and_leaves_no_file(served, monkeypatch):
    app, client, data = served
    from webui.services import storage

    before = set(_saved_files(data))
    reference = _pixels(_generate(client))

    def half_then_fail(image, path, infotext, format, **kw):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "save_image_with_infotext", half_then_fail)
    response = _generate(client, save_images=True, force_task_id="disk-full")
    assert response.status_code == 500 and "No space left" in response.json()["errors"]
    monkeypatch.undo()
    assert set(_saved_files(data)) == before
    assert _pixels(_generate(client, save_images=True)) == reference
    assert len(set(_saved_files(data)) - before) == 1


CRASH_SCRIPT = textwrap.dedent("""
    import io, os, sys
    from pathlib import Path
    from PIL import Image
    from webui.services import storage

    def crash_midway(image, path, infotext, format, **kw):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[:100])
            f.flush()
            os._exit(9)          # the process dies in the middle of writing the PNG

    storage.save_image_with_infotext = crash_midway
    out = storage.OutputStorage(sys.argv[1])
    out.save(Image.new("RGB", (64, 64), "red"), "txt2img", seed=5, infotext="x")
""")


def test_crash_mid_write_leaves_no_truncated_png(tmp_path):
    outputs = tmp_path / "outputs"
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(outputs)], cwd=REPO, capture_output=True,
                            timeout=120)
    assert result.returncode == 9, result.stderr.decode()
    files = [p for p in outputs.rglob("*") if p.is_file()]
    assert files, "the crash happened before anything was written"
    assert all(p.name.startswith(".") and ".tmp" in p.name for p in files), files   # only a hidden temp file
    from webui.services.storage import OutputStorage, next_sequence_number
    folder = files[0].parent
    assert next_sequence_number(folder) == 0   # the leftover does not use up a number
    saved = OutputStorage(outputs).save(Image.new("RGB", (8, 8)), "txt2img", seed=5)
    assert saved.name == "00000-5.png"


# ---- settings ------------------------------------------------------------------------------------

def test_failed_settings_write_keeps_the_old_file(tmp_path, monkeypatch):
    from webui import atomic_files
    from webui.services.settings import Settings

    path = tmp_path / "config.json"
    settings = Settings.load(path)
    settings.update({"queue_max_size": 5})
    good = path.read_text()

    def fail(_):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(atomic_files, "fsync_file", fail)
    with pytest.raises(OSError):
        settings.update({"queue_max_size": 9})
    monkeypatch.undo()
    assert path.read_text() == good and json.loads(good) == {"queue_max_size": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_corrupt_config_at_start_is_backed_up_with_a_warning(checkpoints, tmp_path, caplog):
    from webui.app import App
    from webui.cli import build_parser

    (tmp_path / "config.json").write_bytes(b'{"queue_max_size": 5,\x00 trunc')
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "--ckpt", str(checkpoints.path("sd1"))])
    with caplog.at_level(logging.WARNING):
        app = App.create(args)
    try:
        assert app.settings.get("queue_max_size") == 32
        backups = list(tmp_path.glob("config.json.bak-*"))
        assert len(backups) == 1 and backups[0].read_bytes().startswith(b'{"queue_max_size": 5')
        assert any("corrupt" in r.getMessage() and "config.json" in r.getMessage() for r in caplog.records)
        app.settings.update({"queue_max_size": 6})
        assert json.loads((tmp_path / "config.json").read_text()) == {"queue_max_size": 6}
    finally:
        app.queue.shutdown()
