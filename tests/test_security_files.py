"""Files and models on a shared instance: the file routes serve nothing outside the outputs folder,
pickles never run code, and broken model files are named in an error while the server keeps serving.

The file-route tests run against the real server with the UI mounted (`tests/ui_server.py`); the model
tests against the real API server (`tests/api_server.py`).
"""
from __future__ import annotations

import http.client
import json
import os
import pickle
import struct
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch

from tests.api_server import start_server
from tests.ui_server import Server, write_models
from webui.engine.errors import CheckpointError
from webui.testing.fixtures import write_checkpoint

SECRET = "TOP-SECRET-7f3a9c-do-not-serve"
SMALL = {"width": 64, "height": 64, "steps": 2}


# ---- helpers ---------------------------------------------------------------------------------------

def raw_get(base_url: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalise `..` and re-encode)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Evil:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class EvilPathlib:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_evil_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    files = {"zip-os-system": folder / "evil.ckpt", "zip-pathlib": folder / "evil_pathlib.pt",
             "legacy-pickle": folder / "legacy_evil.bin"}
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Evil(marker)}, files["zip-os-system"])
    torch.save({"w": torch.zeros(2), "payload": EvilPathlib(marker)}, files["zip-pathlib"])
    files["legacy-pickle"].write_bytes(pickle.dumps({"payload": Evil(marker)}))
    return files


def write_broken_safetensors(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """file name → (path, words the error must contain)."""
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, len(data) * 10]
    beyond = json.dumps(header).encode()
    contents = {
        "truncated.safetensors": (data[: len(data) // 2], "beyond the end"),
        "bad_header_length.safetensors": (struct.pack("<Q", 10**12) + data[8:], "bad header length"),
        "not_json.safetensors": (struct.pack("<Q", 16) + b"this is not json" + bytes(64), "not valid JSON"),
        "offsets_beyond.safetensors": (struct.pack("<Q", len(beyond)) + beyond + data[8 + header_len:], "beyond the end"),
        "tiny.safetensors": (b"\x01\x02", "truncated"),
    }
    out = {}
    for name, (content, words) in contents.items():
        (folder / name).write_bytes(content)
        out[name] = (folder / name, words)
    return out


# ---- file routes on the real UI server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    data = root / "data"
    write_models(data / "models" / "Stable-diffusion", names=("alpha",))
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "secret.png").write_text(SECRET)
    outputs = data / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True)
    (outputs / "ok.txt").write_text("served from outputs")
    (outputs / "link.txt").symlink_to(outside / "secret.txt")
    (outputs / "link.png").symlink_to(outside / "secret.png")
    (outputs / "linkdir").symlink_to(outside, target_is_directory=True)
    (data / "config.json").write_text(json.dumps({"note": SECRET, "max_request_mb": 1}))
    server = Server(data, "alpha.safetensors").start()
    yield server, data, outside
    server.stop()


def _tricks(data: Path, outside: Path, port: int) -> list[str]:
    out_dir = data / "outputs" / "txt2img-images"
    secret = outside / "secret.txt"
    rel_up = "/".join([".."] * 2)
    enc = lambda s: s.replace("/", "%2f")   # noqa: E731
    return [
        f"{secret}",                                             # absolute path outside
        f"{out_dir}/{rel_up}/../outside/secret.txt",             # ..
        f"{out_dir}/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",    # %2e%2e
        f"{out_dir}/..%2f..%2f..%2foutside%2fsecret.txt",        # encoded slashes
        enc(f"{out_dir}/../../../outside/secret.txt"),
        f"{out_dir}/%252e%252e/%252e%252e/%252e%252e/outside/secret.txt",   # double encoding
        f"{out_dir}%252f..%252f..%252f..%252foutside%252fsecret.txt",
        f"{out_dir}\\..\\..\\..\\outside\\secret.txt",             # backslashes
        f"{out_dir}%5c..%5c..%5c..%5coutside%5csecret.txt",
        f"{secret}%00.png",                                      # null bytes
        f"{out_dir}/ok.txt%00/../../../../outside/secret.txt",
        f"{out_dir}/link.txt",                                   # symlinks out of outputs
        f"{out_dir}/link.png",
        f"{out_dir}/linkdir/secret.txt",
        f"~/{secret.name}",                                      # home
        "~/.bashrc",
        f"/{secret}",                                            # doubled leading slash
        f"{data}/config.json",                                   # app files that are not outputs
        f"{data}/models/Stable-diffusion/alpha.safetensors",
        f"{data}/server.log",
        "README.md",                                             # relative to the server's working dir
        "webui/server.py",
        "../outside/secret.txt",
        "/etc/passwd",
        "/proc/self/environ",
        f"file://{secret}",                                      # URLs: no fetching, no proxying
        f"http://127.0.0.1:{port}/healthz",
        f"https://127.0.0.1:{port}/healthz",
        f"//127.0.0.1:{port}/healthz",
    ]


ROUTE_PREFIXES = ["/gradio_api/file=", "/file=", "/gradio_api/file%3d", "/gradio_api/static/", "/static/",
                  "/assets/", "/gradio_api/proxy=", "/proxy="]


def test_file_routes_serve_outputs_only(ui):
    server, data, outside = ui
    ok_path = data / "outputs" / "txt2img-images" / "ok.txt"
    status, body = raw_get(server.url, f"/gradio_api/file={ok_path}")
    assert status == 200 and body == b"served from outputs"   # the allowed folder does work
    failures = []
    for prefix in ROUTE_PREFIXES:
        for trick in _tricks(data, outside, server.port):
            status, body = raw_get(server.url, prefix + trick)
            leaked = SECRET.encode() in body or b"root:x:0:0" in body or b"HF_HUB_OFFLINE" in body \
                or b"def build_fastapi" in body or b"safetensors" in body[:200] and b"__metadata__" in body
            if status not in (400, 403, 404, 405) or leaked:
                failures.append((prefix + trick, status, leaked, body[:120]))
    assert not failures, failures
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_gradio_upload_dir_is_not_a_way_out(ui):
    """A file uploaded through Gradio is served back (it is the app's own cache), nothing next to it is."""
    server, data, outside = ui
    response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("x.txt", b"uploaded bytes")})
    assert response.status_code == 200, response.text
    uploaded = response.json()[0]
    status, body = raw_get(server.url, f"/gradio_api/file={uploaded}")
    assert status == 200 and body == b"uploaded bytes"
    status, body = raw_get(server.url, f"/gradio_api/file={uploaded}/../../../../{outside}/secret.txt")
    assert status in (403, 404) and SECRET.encode() not in body


def test_gradio_uploads_obey_the_request_size_limit(ui):
    """config.json of this server sets max_request_mb to 1."""
    server, _, _ = ui
    big = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("big.png", bytes(1_200_000))})
    assert big.status_code == 413 and "max_request_mb" in big.json()["errors"]

    def chunks():   # no Content-Length: counted as it arrives
        boundary = b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"c.png\"\r\n\r\n"
        yield boundary
        for _ in range(12):
            yield bytes(100_000)
        yield b"\r\n--xyz--\r\n"

    chunked = httpx.post(f"{server.url}/gradio_api/upload", content=chunks(),
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert chunked.status_code == 413
    small = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("small.png", bytes(200_000))})
    assert small.status_code == 200


# ---- pickles and broken safetensors through the model manager ----------------------------------------

def _manager(data_dir: Path):
    from webui.engine.engine import Engine
    from webui.engine.paths import DataPaths

    return Engine(DataPaths.create(data_dir), device="cpu").models


def test_model_manager_refuses_malicious_pickles(tmp_path):
    ckpts = tmp_path / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    evil = write_evil_checkpoints(ckpts, marker)
    manager = _manager(tmp_path)
    for path in evil.values():
        with pytest.raises(CheckpointError) as err:
            manager.load(path)
        assert path.name in str(err.value)
        assert "refused" in str(err.value) or "not a PyTorch zip archive" in str(err.value)
        assert not marker.exists(), f"{path.name}: the pickle payload ran"
    assert manager.current is None
    title = manager.title(manager.resolve("evil.ckpt"))
    assert title.endswith("[pickle]") and manager.resolve(title).name == "evil.ckpt"


# ---- the same through the API of the real server ----------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-api")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_checkpoint(ckpts / "a.safetensors", "sd1", seed=0)
    write_checkpoint(ckpts / "dup.safetensors", "sd1", seed=1)
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpts / "dup.ckpt")
    marker = root / "PWNED"
    write_evil_checkpoints(ckpts, marker)
    broken = write_broken_safetensors(ckpts, ckpts / "a.safetensors")
    server = start_server(root, ckpts / "a.safetensors")
    client = httpx.Client(base_url=server.url, timeout=300)
    yield client, marker, broken
    client.close()
    server.stop()


def _model_name(client: httpx.Client) -> str:
    response = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["sd_model_name"]


def test_model_list_marks_pickles_and_prefers_safetensors(api):
    client, _, _ = api
    models = client.get("/sdapi/v1/sd-models").json()
    by_name = {Path(m["filename"]).name: m for m in models}
    assert by_name["evil.ckpt"]["pickle"] is True and by_name["evil.ckpt"]["title"].endswith("[pickle]")
    assert by_name["a.safetensors"]["pickle"] is False and "[pickle]" not in by_name["a.safetensors"]["title"]
    assert "dup.safetensors" in by_name and "dup.ckpt" not in by_name


def test_switching_to_a_malicious_pickle_is_refused_and_never_runs(api):
    client, marker, _ = api
    for value in ("evil.ckpt", "evil.ckpt [pickle]"):
        response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": value})
        assert 400 <= response.status_code < 600 and response.status_code != 502, response.text
        body = response.json()
        assert "evil.ckpt" in body["errors"] and "refused" in body["errors"], body
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "evil.ckpt"}})
    assert response.status_code >= 400 and "evil.ckpt" in response.json()["errors"]
    assert not marker.exists()
    assert _model_name(client) == "a"


def test_malformed_safetensors_are_named_and_server_stays_up(api):
    client, _, broken = api
    for name, (path, words) in broken.items():
        response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert response.status_code >= 400, (name, response.text)
        errors = response.json()["errors"]
        assert name in errors and words in errors, (name, errors)
        assert client.get("/healthz").status_code == 200
    assert _model_name(client) == "a"
