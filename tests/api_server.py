"""Starts the real server (`launch.py --nowebui`) as a subprocess on a free loopback port, for API tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_server(data_dir: Path, ckpt: Path, timeout: float = 120.0, extra_args: list[str] = ()) -> ApiServer:
    port = free_port()
    log_path = data_dir / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "launch.py"), "--nowebui", "--data-dir", str(data_dir),
           "--port", str(port), "--ckpt", str(ckpt), "--precision", "fp32", *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"server did not start within {timeout}s:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(data_dir) -> "ApiServer":
    """The real server on the test module's `data_dir`, started with its a.safetensors."""
    srv = start_server(data_dir, data_dir / "models" / "Stable-diffusion" / "a.safetensors")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=180) as c:
        yield c


def data_dir_with(root: Path, *checkpoints: tuple[str, str, int]) -> Path:
    """`root` as a data dir whose checkpoint folder holds fixture files NAME.safetensors of (NAME, family, seed)."""
    from webui.testing.fixtures import write_checkpoint

    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name, family, seed in checkpoints:
        write_checkpoint(ckpts / f"{name}.safetensors", family, seed=seed)
    return root
