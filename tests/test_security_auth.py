"""Logins (--gradio-auth, --api-auth), the login throttle, and job ownership, over real HTTP on loopback.

The server here is the app exactly as `launch.py` builds it (the real flag parser, App.create, build_fastapi),
served by uvicorn on a loopback port from a thread of the test process. Building it in-process is what lets the
route test walk `server.routes` of the very app that answers the requests, the mounted Gradio app included.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Mount

from tests.api_server import free_port
from webui.security.auth import (CredentialError, CredentialStore, FailureThrottle, SessionStore, parse_credentials,
                                 read_credentials_file, safe_next)
from webui.security.owners import Requester, requester_of
from webui.services.job_queue import InProcessQueue, JobForbidden, JobStatus
from webui.testing.fixtures import write_checkpoint

UI_AUTH = "admin:pa:ss:word,bob:bob-pw"          # admin is the first user; passwords may contain ':'
API_AUTH = "root:r00t:key,carol:carol-pw"
UI_ADMIN, UI_USER = ("admin", "pa:ss:word"), ("bob", "bob-pw")
API_ADMIN, API_USER = ("root", "r00t:key"), ("carol", "carol-pw")
OPEN = {"/healthz", "/login", "/logout"}


# ---- units: credentials, throttle, sessions ------------------------------------------------------------

def test_credentials_split_on_the_first_colon():
    assert parse_credentials("a:b, c:d:e:f ,x:") == [("a", "b"), ("c", "d:e:f"), ("x", "")]
    with pytest.raises(CredentialError, match="no ':'"):
        parse_credentials("a:b,secretwithoutcolon")
    with pytest.raises(CredentialError, match="empty user"):
        parse_credentials(":pw")


def test_credentials_file_takes_several_per_line(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("# club members\nann:one:1, ben:two\n\n  cid:three\n")
    assert read_credentials_file(path) == [("ann", "one:1"), ("ben", "two"), ("cid", "three")]
    with pytest.raises(CredentialError, match="cannot read"):
        read_credentials_file(tmp_path / "missing.txt")


def test_store_verifies_exact_pairs_and_names_the_first_user_admin():
    store = CredentialStore(parse_credentials("ann:p:1,ben:p2,ann:other"))
    assert store.admin == "ann"
    assert store.verify("ann", "p:1") and store.verify("ben", "p2") and store.verify("ann", "other")
    assert not store.verify("ann", "p2") and not store.verify("ben", "p:1") and not store.verify("", "")
    assert not store.verify("ann", "p:1 ") and not store.verify("ännchen", "p:1")


def test_throttle_blocks_after_five_failures_within_a_minute():
    now = [1000.0]
    throttle = FailureThrottle(limit=5, window=60.0, clock=lambda: now[0])
    for _ in range(4):
        throttle.failed("10.0.0.5")
        now[0] += 1
    assert throttle.retry_after("10.0.0.5") is None
    throttle.failed("10.0.0.5")
    assert throttle.retry_after("10.0.0.5") == 56          # the first failure (t=1000) ages out at t=1060
    assert throttle.retry_after("10.0.0.6") is None        # per client
    now[0] = 1060.5
    assert throttle.retry_after("10.0.0.5") is None
    throttle.failed("10.0.0.6")
    throttle.succeeded("10.0.0.6")
    assert throttle._failures.get("10.0.0.6") is None


def test_sessions_expire_and_can_be_dropped():
    now = [0.0]
    sessions = SessionStore(max_age=100, clock=lambda: now[0])
    token = sessions.create("ann")
    assert len(token) >= 40 and sessions.user(token) == "ann" and sessions.user("guess") is None
    now[0] = 101
    assert sessions.user(token) is None
    token = sessions.create("ben")
    sessions.drop(token)
    assert sessions.user(token) is None


def test_login_redirects_only_to_local_paths():
    assert safe_next("/?__theme=dark") == "/?__theme=dark"
    for bad in ("//evil.example/", "https://evil.example/", "/\\evil.example", "", None, "javascript:alert(1)"):
        assert safe_next(bad) == "/"


def test_queue_controls_act_only_on_the_owners_jobs():
    queue = InProcessQueue()
    gate = threading.Event()
    try:
        running = queue.submit("t", lambda control, progress: gate.wait(10), owner="user:ann")
        waiting = queue.submit("t", lambda control, progress: None, owner="user:ben")
        deadline = time.time() + 10
        while running.status is not JobStatus.RUNNING and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(JobForbidden):
            queue.cancel(waiting.id, owner="user:ann")
        with pytest.raises(JobForbidden):
            queue.interrupt(None, owner="user:ben")          # the running job is ann's
        with pytest.raises(JobForbidden):
            queue.skip(running.id, owner="user:ben")
        assert not running.control.interrupted and waiting.status is JobStatus.QUEUED
        queue.cancel(waiting.id, owner="user:ben")
        queue.interrupt(None, owner="user:ann")
        assert waiting.status is JobStatus.CANCELLED and running.control.interrupted
    finally:
        gate.set()
        queue.shutdown()


def test_requester_is_read_from_the_request_state():
    class State:
        studio_requester = Requester("ann", authenticated=True, admin=False)

    class FakeRequest:
        state = State()

    assert requester_of(FakeRequest()).owner == "user:ann"
    assert requester_of(None).owner == "client:unknown"


# ---- the served app --------------------------------------------------------------------------------------

@dataclass
class Studio:
    url: str
    server: FastAPI

    def client(self, auth: tuple[str, str] | None = None, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=60, follow_redirects=False, **kw)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    import uvicorn

    from webui.app import App
    from webui.cli import build_parser
    from webui.server import build_fastapi

    root = tmp_path_factory.mktemp("security-auth")
    ckpt = root / "models" / "Stable-diffusion" / "a.safetensors"
    ckpt.parent.mkdir(parents=True)
    write_checkpoint(ckpt, "sd1", seed=0)
    args = build_parser().parse_args(["--api", "--data-dir", str(root), "--ckpt", str(ckpt), "--gradio-auth", UI_AUTH,
                                      "--api-auth", API_AUTH, "--allowed-hosts", "studio.lan"])
    app = App.create(args)
    server = build_fastapi(app, with_ui=True, with_api=True)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.2)
    yield Studio(url, server)
    uv.should_exit = True
    thread.join(15)
    app.queue.shutdown()


def all_routes(routes, prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, descending into included routers and mounted apps (Gradio's)."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            base = prefix + route.path
            found += all_routes(inner, base) if inner else [(base + "/probe.txt", {"GET"})]
        elif hasattr(route, "original_router"):      # FastAPI's include_router entry
            found += all_routes(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            found.append((prefix + route.path, set(getattr(route, "methods", None) or {"GET"})))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "probe", path) or "/"


def status_of(client: httpx.Client, method: str, path: str) -> httpx.Response:
    """Status and headers only: some Gradio routes are event streams that never end."""
    with client.stream(method, path, headers={"accept": "text/html,application/json"}) as response:
        if response.status_code == 401:
            response.read()
        return response


def refused(response: httpx.Response) -> bool:
    """Refused by our login layer (a route's own 401, e.g. Gradio's Hugging Face token routes, does not count)."""
    login = response.status_code == 303 and response.headers.get("location", "").startswith("/login")
    return login or (response.status_code == 401 and b"log in at /login" in response.content)


def test_every_route_needs_a_login(studio):
    routes = [(concrete(path), method) for path, methods in all_routes(studio.server.routes)
              for method in sorted(methods - {"HEAD"} or {"HEAD"})]
    paths = {path for path, _ in routes}
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/loras", "/internal/progress", "/gradio_api/queue/join",
            "/gradio_api/upload", "/config", "/"} <= paths, sorted(paths)
    assert len(routes) > 60
    anonymous, ui, api = studio.client(), studio.client(UI_USER), studio.client(API_USER)
    problems = []
    for path, method in routes:
        if path.rstrip("/") in OPEN or path == "/healthz":
            continue
        is_api = path.startswith(("/sdapi/", "/internal/"))
        first = status_of(anonymous, method, path)
        if not refused(first):
            problems.append(f"{method} {path}: open without login ({first.status_code})")
        if is_api and first.headers.get("www-authenticate", "").split()[:1] != ["Basic"]:
            problems.append(f"{method} {path}: no WWW-Authenticate: Basic")
        second = status_of(api if is_api else ui, method, path)
        if refused(second) or second.status_code == 429:
            problems.append(f"{method} {path}: refused with valid credentials ({second.status_code})")
    assert not problems, "\n".join(problems)


def test_open_routes_and_api_list_separation(studio):
    anonymous = studio.client()
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/login").status_code == 200 and b'name="password"' in anonymous.get("/login").content
    # --api-auth replaces the UI list on /sdapi and /internal: a UI user's password does not open the API
    assert studio.client(UI_ADMIN).get("/sdapi/v1/samplers").status_code == 401
    assert studio.client(API_ADMIN).get("/sdapi/v1/samplers").status_code == 200
    assert studio.client(API_USER).get("/config").status_code == 401


def test_browser_login_sets_a_session_that_opens_the_ui(studio):
    browser = studio.client()
    first = browser.get("/?view=api", headers={"accept": "text/html"})
    assert first.status_code == 303 and first.headers["location"] == "/login?next=/%3Fview%3Dapi"
    wrong = browser.post("/login", data={"username": "bob", "password": "nope", "next": "/"})
    assert wrong.status_code == 401 and b"Wrong user name or password" in wrong.content
    login = browser.post("/login", data={"username": "bob", "password": "bob-pw", "next": "//evil.example/"})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    config = browser.get("/config")
    assert config.status_code == 200 and config.json()["username"] == "bob"   # Gradio knows the user
    assert browser.get("/gradio_api/info").status_code == 200
    assert browser.get("/sdapi/v1/samplers").status_code == 401   # a UI session is not an --api-auth login
    browser.get("/logout")
    assert browser.get("/config").status_code == 401


def test_gradio_cors_is_closed_on_lan_host_names(studio):
    """Gradio alone answers any Origin (with credentials) once Host is not localhost; ours must not."""
    response = studio.client(UI_USER).get("/config", headers={"host": "studio.lan", "origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def wait_for_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = client.get(f"/sdapi/v1/jobs/{job_id}")
        if response.status_code == 200 and response.json()["status"] in statuses:
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def test_jobs_are_owned(studio):
    admin, carol = studio.client(API_ADMIN), studio.client(API_USER)
    body = {"width": 64, "height": 64, "prompt": "owned"}
    long_job = threading.Thread(target=admin.post, args=("/sdapi/v1/txt2img",),
                                kwargs={"json": {**body, "steps": 400, "force_task_id": "root-long"}})
    long_job.start()
    wait_for_status(admin, "root-long", {"running"})
    queued = threading.Thread(target=carol.post, args=("/sdapi/v1/txt2img",),
                              kwargs={"json": {**body, "steps": 2, "force_task_id": "carol-queued"}})
    queued.start()
    try:
        wait_for_status(carol, "carol-queued", {"queued"})
        for path in ("/sdapi/v1/jobs/root-long/interrupt", "/sdapi/v1/jobs/root-long/cancel"):
            response = carol.post(path)
            assert response.status_code == 403, (path, response.text)
            assert "someone else" in response.json()["detail"]
        for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):   # A1111's global controls: admins only
            response = carol.post(path)
            assert response.status_code == 403, (path, response.text)
            assert "only an admin" in response.json()["detail"]
        assert admin.get("/sdapi/v1/jobs/root-long").json()["status"] == "running"
        # the running job's live preview is its owner's: carol sees progress but no image
        assert carol.get("/sdapi/v1/progress").json()["current_image"] is None
        assert carol.post("/sdapi/v1/jobs/carol-queued/cancel").json()["status"] == "cancelled"
        assert admin.post("/sdapi/v1/interrupt").status_code == 200   # the admin may stop anyone's job
        assert wait_for_status(admin, "root-long", {"done"})["step"] < 400
    finally:
        admin.post("/sdapi/v1/jobs/root-long/cancel")
        long_job.join(120)
        queued.join(120)


def test_failed_logins_are_throttled_per_client(studio):
    """Last in this module: it locks 127.0.0.1 out of password attempts for a minute."""
    client = studio.client()
    for _ in range(5):
        assert client.get("/sdapi/v1/samplers", auth=("carol", "guess")).status_code == 401
    blocked = client.get("/sdapi/v1/samplers", auth=API_USER)           # even the right password now
    assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
    assert client.post("/login", data={"username": "bob", "password": "bob-pw"}).status_code == 429
    assert client.get("/healthz").status_code == 200
