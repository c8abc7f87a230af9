"""Browser protections (Host check, CORS, cross-origin writes, security headers), job ownership without auth,
and the --listen warning, against the real server (`launch.py --nowebui`) on loopback."""
from __future__ import annotations

import argparse
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.api_server import data_dir_with, start_server
from webui.security.exposure import exposure_warning, server_is_exposed
from webui.security.headers import with_security_headers
from webui.security.hosts import HostPolicy, OriginPolicy, split_host

GOOD_ORIGIN, EVIL_ORIGIN = "http://good.example:3000", "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = data_dir_with(tmp_path_factory.mktemp("security-network"), ("a", "sd1", 0))
    ckpt = root / "models" / "Stable-diffusion" / "a.safetensors"
    srv = start_server(root, ckpt, extra_args=["--cors-allow-origins", f"{GOOD_ORIGIN},http://other.example",
                                               "--allowed-hosts", "studio.lan,.club.lan"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# ---- Host check ----------------------------------------------------------------------------------------

def test_unknown_host_names_are_refused_with_a_clear_message(client):
    for path in ("/healthz", "/sdapi/v1/samplers", "/docs"):
        response = client.get(path, headers={"host": "evil.example"})
        assert response.status_code == 400, path
        assert "evil.example" in response.json()["detail"] and "--allowed-hosts" in response.json()["detail"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_local_names_the_bind_address_and_allowed_hosts_are_served(server, client):
    port = port_of(server)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "studio.lan", f"STUDIO.lan:{port}",
                 "gpu.club.lan", "app.localhost"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("studio.lan.evil.example", "club.lan.evil", "192.168.1.20", "localhost.evil.example"):
        assert client.get("/healthz", headers={"host": host}).status_code == 400, host


def test_host_policy_accepts_any_ip_only_when_bound_to_all_interfaces():
    listen = HostPolicy.from_args(SimpleNamespace(listen=True, server_name=None, allowed_hosts=None))
    assert listen.allows("192.168.1.20:7860") and listen.allows("[fe80::1]:7860") and listen.allows("localhost")
    assert not listen.allows("evil.example") and not listen.allows("192.168.1.20.nip.io")
    lan = HostPolicy.from_args(SimpleNamespace(listen=False, server_name="192.168.1.20", allowed_hosts="*.x,*"))
    assert lan.allow_all
    lan = HostPolicy.from_args(SimpleNamespace(listen=False, server_name="192.168.1.20", allowed_hosts=None))
    assert lan.allows("192.168.1.20:7860") and lan.allows("127.0.0.1") and not lan.allows("192.168.1.21")
    assert split_host("[::1]:80") == "::1" and split_host("Example.LAN.:80") == "example.lan"


# ---- CORS, cross-origin writes, headers ----------------------------------------------------------------

def test_cors_is_open_only_to_the_named_origins(client):
    good = client.get("/sdapi/v1/samplers", headers={"origin": GOOD_ORIGIN})
    assert good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    evil = client.get("/sdapi/v1/samplers", headers={"origin": EVIL_ORIGIN})
    assert evil.status_code == 200 and "access-control-allow-origin" not in evil.headers
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    assert client.options("/sdapi/v1/options", headers={"origin": GOOD_ORIGIN, **preflight}).status_code == 200
    refused = client.options("/sdapi/v1/options", headers={"origin": EVIL_ORIGIN, **preflight})
    assert "access-control-allow-origin" not in refused.headers and refused.status_code >= 400


def test_cross_origin_writes_are_refused(server, client):
    body = {"image": ""}
    evil = client.post("/sdapi/v1/png-info", json=body, headers={"origin": EVIL_ORIGIN})
    assert evil.status_code == 403 and "--cors-allow-origins" in evil.json()["detail"]
    assert client.post("/sdapi/v1/png-info", json=body, headers={"origin": "null"}).status_code == 403
    assert client.post("/sdapi/v1/png-info", json=body, headers={"origin": GOOD_ORIGIN}).status_code == 200
    assert client.post("/sdapi/v1/png-info", json=body, headers={"origin": server.url}).status_code == 200
    assert client.post("/sdapi/v1/png-info", json=body).status_code == 200   # non-browser clients send no Origin


def test_security_headers_on_every_response(client):
    responses = [client.get("/healthz"), client.get("/no/such/route"), client.post("/sdapi/v1/txt2img", json=[]),
                 client.get("/docs"), client.get("/healthz", headers={"host": "evil.example"})]
    assert [r.status_code for r in responses] == [200, 404, 422, 200, 400]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in response.headers["content-security-policy"]


def test_an_existing_csp_gains_frame_ancestors():
    merged = dict(with_security_headers([(b"content-security-policy", b"default-src 'self';")]))
    assert merged[b"content-security-policy"] == b"default-src 'self'; frame-ancestors 'self'"
    assert OriginPolicy(regex=r"https://.*\.club\.lan").allows("https://a.club.lan", "x")
    assert not OriginPolicy(regex=r"https://.*\.club\.lan").allows("https://a.club.lan.evil", "x")


# ---- jobs are owned by the client address when auth is off ---------------------------------------------

def wait_for_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = client.get(f"/sdapi/v1/jobs/{job_id}")
        if response.status_code == 200 and response.json()["status"] in statuses:
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def test_without_auth_jobs_belong_to_the_client_address(server, client):
    """127.0.0.2 is another loopback address: to the server, another machine."""
    other = httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    body = {"width": 64, "height": 64, "steps": 400, "prompt": "mine", "force_task_id": "local-long"}
    job = threading.Thread(target=client.post, args=("/sdapi/v1/txt2img",), kwargs={"json": body})
    job.start()
    try:
        wait_for_status(client, "local-long", {"running"})
        for path in ("/sdapi/v1/jobs/local-long/interrupt", "/sdapi/v1/jobs/local-long/cancel"):
            response = other.post(path)
            assert response.status_code == 403 and "someone else" in response.json()["detail"], path
        assert client.get("/sdapi/v1/jobs/local-long").json()["status"] == "running"
        assert other.post("/sdapi/v1/skip").status_code == 200   # A1111's global controls stay open without auth
        assert client.post("/sdapi/v1/jobs/local-long/interrupt").json()["id"] == "local-long"
        assert wait_for_status(client, "local-long", {"done"})["step"] < 400
    finally:
        client.post("/sdapi/v1/jobs/local-long/cancel")
        job.join(120)
        other.close()


# ---- exposure warning, bad flags -----------------------------------------------------------------------

def namespace(**kw) -> argparse.Namespace:
    base = dict(listen=False, server_name=None, nowebui=False, gradio_auth=None, gradio_auth_path=None,
                api_auth=None, enable_insecure_extension_access=False)
    return argparse.Namespace(**{**base, **kw})


def test_exposure_warning_only_when_listening_without_a_login():
    assert not server_is_exposed(namespace()) and exposure_warning(namespace()) is None
    assert server_is_exposed(namespace(listen=True)) and server_is_exposed(namespace(server_name="192.168.1.2"))
    assert not server_is_exposed(namespace(server_name="127.0.0.1"))
    warning = exposure_warning(namespace(listen=True))
    assert "0.0.0.0" in warning and "--gradio-auth" in warning and "Extension install" in warning
    assert "Extension" not in exposure_warning(namespace(listen=True, enable_insecure_extension_access=True))
    assert exposure_warning(namespace(listen=True, gradio_auth="a:b")) is None
    assert "--gradio-auth" in exposure_warning(namespace(listen=True, api_auth="a:b"))   # the UI is still open
    assert exposure_warning(namespace(listen=True, nowebui=True, api_auth="a:b")) is None
    assert "--api-auth" in exposure_warning(namespace(listen=True, nowebui=True))


def test_serve_prints_the_warning_before_starting(monkeypatch, capsys):
    from webui import server as server_module

    class Stop(Exception):
        pass

    def refuse(args):
        raise Stop
    monkeypatch.setattr(server_module.App, "create", staticmethod(refuse))
    with pytest.raises(Stop):
        server_module.serve(namespace(listen=True, port=None, api=False))
    err = capsys.readouterr().err
    assert "WARNING" in err and "!!!!!!!!" in err and "without --gradio-auth" in err


def test_ui_shows_the_warning_banner():
    import gradio as gr

    from webui.ui.blocks import _exposure_banner

    with gr.Blocks() as exposed:
        _exposure_banner(SimpleNamespace(args=namespace(listen=True)))
    with gr.Blocks() as safe:
        _exposure_banner(SimpleNamespace(args=namespace(listen=True, gradio_auth="a:b")))
    banners = [b for b in exposed.blocks.values() if isinstance(b, gr.HTML)]
    assert len(banners) == 1 and "without --gradio-auth" in banners[0].value and 'role="alert"' in banners[0].value
    assert not [b for b in safe.blocks.values() if isinstance(b, gr.HTML)]


def test_malformed_credentials_stop_the_server_without_echoing_them(tmp_path, capsys):
    from webui.cli import main

    assert main(["--nowebui", "--data-dir", str(tmp_path), "--api-auth", "ann:ok,hunter2"]) == 2
    err = capsys.readouterr().err
    assert "--api-auth: entry 2 has no ':'" in err and "hunter2" not in err


def test_output_folders_change_only_locally_or_by_an_admin():
    from webui.api.context import check_path_setting
    from webui.api.errors import ApiError

    exposed = SimpleNamespace(args=SimpleNamespace(listen=True, server_name=None))
    local = SimpleNamespace(args=SimpleNamespace(listen=False, server_name=None))
    with pytest.raises(ApiError) as err:
        check_path_setting(exposed, "outdir_txt2img_samples", "outdir_txt2img_samples", admin=False)
    assert err.value.status == 403 and "admin" in err.value.message
    check_path_setting(exposed, "outdir_txt2img_samples", "outdir_txt2img_samples", admin=True)
    check_path_setting(local, "outdir_img2img_samples", "outdir_img2img_samples", admin=False)
    check_path_setting(exposed, "samples_format", "samples_format", admin=False)   # not a path: anyone
