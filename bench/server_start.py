"""Server start time: `python launch.py` as a subprocess until the first HTTP 200 on /healthz and on /.

    python bench/server_start.py [--model demo|sd15|...] [--nowebui] [--threads 1]

The server gets an empty data dir and the checkpoint by --ckpt, so the time includes loading it.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit  # noqa: E402
import models  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--nowebui", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    port = free_port()
    ckpt = models.checkpoint_path(args.model)
    cmd = [sys.executable, str(REPO / "launch.py"), "--data-dir", tempfile.mkdtemp(prefix="sd-bench-srv-"),
           "--ckpt", str(ckpt), "--port", str(port)] + (["--nowebui"] if args.nowebui else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads), GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    urls = {"healthz": f"http://127.0.0.1:{port}/healthz",
            "root": f"http://127.0.0.1:{port}/" + ("docs" if args.nowebui else "")}
    seen: dict[str, float] = {}
    try:
        while len(seen) < len(urls) and time.perf_counter() - start < args.timeout and proc.poll() is None:
            for name, url in urls.items():
                if name not in seen and ok(url):
                    seen[name] = time.perf_counter() - start
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    tag = dict(model=args.model, ui=not args.nowebui, threads=args.threads)
    if len(seen) < len(urls):
        log.seek(0)
        tag["error"] = (log.read().decode(errors="replace").strip().splitlines() or ["timeout"])[-1][:200]
    for name in urls:
        emit(f"server_start_{name}", seen.get(name, float("nan")), "s", **tag)


if __name__ == "__main__":
    main()
