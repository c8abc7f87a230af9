"""Test helper: tiny fixture checkpoints and the real server (`python launch.py`) in a subprocess."""
from __future__ import annotations

import os
from contextlib import contextmanager
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE_SIZE = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_models(ckpt_dir: Path, names: tuple[str, ...] = ("alpha", "beta"), size: int = FIXTURE_SIZE) -> list[Path]:
    """Tiny random SD1 checkpoints that declare `size` as their resolution, as the demo model does."""
    from webui.engine import checkpoint_writer as cw
    from webui.testing import fixtures

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        state = fixtures.checkpoint_state_dict("sd1", fixtures.build_components("sd1", seed), True, seed)
        paths.append(cw.save_single_file(ckpt_dir / f"{name}.safetensors", state,
                                         metadata={"modelspec.resolution": f"{size}x{size}"}))
    return paths


class Server:
    """`python launch.py --data-dir DATA --ckpt CKPT --port PORT`, stopped by `stop()`."""

    def __init__(self, data_dir: Path, ckpt: str, port: int | None = None):
        self.data_dir, self.ckpt, self.port = Path(data_dir), ckpt, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Server":
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "launch.py", "--data-dir", str(self.data_dir), "--ckpt", self.ckpt,
               "--port", str(self.port), "--precision", "fp32"]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()


CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@contextmanager
def chromium():
    """Debian's chromium driven by playwright (never a downloaded browser); skips the test if either is missing."""
    import importlib.util

    import pytest

    if not CHROMIUM.exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("needs the Python playwright package (pip install playwright; no browser download needed)")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def app_page(browser, url: str, timeout: int = 60_000):
    """A fresh browser context (own localStorage) on the app, loaded; `page.errors` collects console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
    try:
        page.goto(url)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=timeout)
        yield page
    finally:
        context.close()
