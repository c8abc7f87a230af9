"""Load and soak test of the real API server on the bundled demo model.

    HF_HUB_OFFLINE=1 python bench/load_test.py                 # 12 clients x 3 jobs, soak 50 gens / 20 swaps
    HF_HUB_OFFLINE=1 python bench/load_test.py --write docs/reliability.md

Phase 1: N concurrent clients each submit J txt2img jobs (their own seeds, prompts and CFG). Every answer
must carry its own request's parameters (info and infotext), a few jobs are regenerated afterwards and must
match pixel for pixel (so no image was swapped between clients), and the queue's records must show FIFO:
jobs start in the order they were queued and never overlap.
Phase 2: a soak of G generations with S checkpoint swaps (demo model <-> a fixture checkpoint), sampling
the server's RSS after every generation; growth compares the median of the window of samples just after a
warm-up (both models loaded once) with the median of the last window. RSS moves by ~5% with whichever
model is current and what the allocator holds at that moment, so single samples would read that as growth;
a leak moves the whole window.
The numbers depend on a shared, busy CPU; the checks are about correctness.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes-v1.safetensors"
FIXTURE = "fixture-sd1.safetensors"


@dataclass
class Report:
    clients: int = 0
    jobs_per_client: int = 0
    steps: int = 0
    load_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fifo_ok: bool = False
    regenerated_ok: bool = False
    soak_generations: int = 0
    soak_swaps: int = 0
    soak_seconds: float = 0.0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_trace: list[float] = field(default_factory=list)   # after each soak generation
    rss_window: int = 1   # samples in each median (warm-up and end)

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_mb - self.rss_warm_mb) / self.rss_warm_mb if self.rss_warm_mb else 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.fifo_ok and self.regenerated_ok


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def prepare_data_dir(root: Path) -> Path:
    from tests.ui_server import write_models

    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True, exist_ok=True)
    if not (ckpts / DEMO.name).exists():
        os.symlink(DEMO, ckpts / DEMO.name)
    if not (ckpts / FIXTURE).exists():
        write_models(ckpts, names=(Path(FIXTURE).stem,), size=64)
    return ckpts / DEMO.name


# ---- phase 1: concurrent clients ------------------------------------------------------------------

def job_request(client: int, j: int, steps: int) -> dict:
    return {"prompt": f"a red circle, client {client} job {j}", "seed": 1000 * client + j, "steps": steps,
            "cfg_scale": 5.0 + 0.5 * (client % 5), "width": 64, "height": 64, "sampler_name": "Euler",
            "force_task_id": f"load-c{client:02d}-j{j}"}


def check_answer(req: dict, answer: dict) -> list[str]:
    info = json.loads(answer["info"])
    problems = []
    expect = {"seed": req["seed"], "prompt": req["prompt"], "cfg_scale": req["cfg_scale"], "steps": req["steps"],
              "width": 64, "height": 64}
    for key, value in expect.items():
        if info.get(key) != value:
            problems.append(f"{req['force_task_id']}: info[{key!r}] = {info.get(key)!r}, expected {value!r}")
    text = info["infotexts"][0]
    if f"Seed: {req['seed']}," not in text or not text.startswith(req["prompt"]) or f"CFG scale: {req['cfg_scale']}" not in text:
        problems.append(f"{req['force_task_id']}: infotext does not match its request: {text!r}")
    if len(answer["images"]) != 1:
        problems.append(f"{req['force_task_id']}: {len(answer['images'])} images")
    return problems


def run_clients(url: str, clients: int, jobs: int, steps: int, report: Report) -> dict[str, tuple[dict, bytes]]:
    results: dict[str, tuple[dict, bytes]] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client_loop(c: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            start.wait()
            for j in range(jobs):
                req = job_request(c, j, steps)
                t0 = time.perf_counter()
                response = http.post("/sdapi/v1/txt2img", json=req)
                elapsed = time.perf_counter() - t0
                with lock:
                    report.latencies.append(elapsed)
                    if response.status_code != 200:
                        report.problems.append(f"{req['force_task_id']}: HTTP {response.status_code} {response.text[:200]}")
                        continue
                    answer = response.json()
                    report.problems.extend(check_answer(req, answer))
                    results[req["force_task_id"]] = (req, base64.b64decode(answer["images"][0]))

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.load_seconds = time.perf_counter() - t0
    expected = clients * jobs
    if len(results) != expected:
        report.problems.append(f"{expected - len(results)} of {expected} jobs lost")
    return results


def check_fifo(http: httpx.Client, ids: list[str], report: Report) -> None:
    records = [http.get(f"/sdapi/v1/jobs/{i}").json() for i in ids]
    missing = [i for i, r in zip(ids, records) if "created" not in r]
    if missing:
        report.problems.append(f"job records missing: {missing}")
        return
    by_queue = sorted(records, key=lambda r: r["created"])
    by_start = sorted(records, key=lambda r: r["started"])
    report.fifo_ok = [r["id"] for r in by_queue] == [r["id"] for r in by_start] and all(
        a["finished"] <= b["started"] for a, b in zip(by_start, by_start[1:]))
    if not report.fifo_ok:
        report.problems.append("queue order was not FIFO (or jobs overlapped)")


def check_regenerated(http: httpx.Client, results: dict[str, tuple[dict, bytes]], report: Report) -> None:
    """Re-run some jobs alone: the images returned under load must be exactly theirs."""
    ids = sorted(results)
    sample = ids[:: max(1, len(ids) // 4)][:4]
    report.regenerated_ok = True
    for job_id in sample:
        req, image = results[job_id]
        again = http.post("/sdapi/v1/txt2img", json={**req, "force_task_id": job_id + "-again"})
        pixels = lambda data: Image.open(io.BytesIO(data)).tobytes()  # noqa: E731
        if again.status_code != 200 or pixels(base64.b64decode(again.json()["images"][0])) != pixels(image):
            report.regenerated_ok = False
            report.problems.append(f"{job_id}: regenerated image differs from the one returned under load")


# ---- phase 2: soak ---------------------------------------------------------------------------------

def soak(http: httpx.Client, pid: int, generations: int, swaps: int, steps: int, report: Report) -> None:
    models = [DEMO.name, FIXTURE]
    swap_every = max(1, generations // max(1, swaps))
    warm_after = min(generations // 5 + 1, generations)
    report.rss_start_mb = rss_mb(pid)
    t0 = time.perf_counter()
    done_swaps = 0
    for i in range(generations):
        if done_swaps < swaps and i % swap_every == 0:
            target = models[(done_swaps + 1) % 2]
            response = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": target})
            if response.status_code != 200:
                report.problems.append(f"swap {done_swaps} to {target}: HTTP {response.status_code}")
            done_swaps += 1
        response = http.post("/sdapi/v1/txt2img", json={"prompt": f"soak {i}", "seed": i, "steps": steps,
                                                         "width": 64, "height": 64, "sampler_name": "Euler"})
        if response.status_code != 200:
            report.problems.append(f"soak generation {i}: HTTP {response.status_code} {response.text[:200]}")
        rss = rss_mb(pid)
        report.rss_trace.append(rss)
        report.rss_max_mb = max(report.rss_max_mb, rss)
    while done_swaps < swaps:   # when swaps > generations
        http.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[(done_swaps + 1) % 2]})
        done_swaps += 1
    report.soak_seconds = time.perf_counter() - t0
    report.soak_generations, report.soak_swaps = generations, done_swaps
    if not report.rss_trace:
        return
    window = report.rss_window = max(1, generations // 5)
    report.rss_warm_mb = statistics.median(report.rss_trace[warm_after - 1:warm_after - 1 + window])
    report.rss_end_mb = statistics.median(report.rss_trace[-window:])


# ---- driver ----------------------------------------------------------------------------------------

def run(clients: int = 12, jobs: int = 3, steps: int = 4, generations: int = 50, swaps: int = 20,
        data_dir: Path | None = None) -> Report:
    from tests.api_server import start_server

    root = Path(data_dir or tempfile.mkdtemp(prefix="load-test-"))
    demo = prepare_data_dir(root)
    report = Report(clients=clients, jobs_per_client=jobs, steps=steps)
    server = start_server(root, demo, extra_args=["--ckpt-cache", "1"])
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            http.post("/sdapi/v1/options", json={"queue_max_size": max(32, clients * 2)})
            results = run_clients(server.url, clients, jobs, steps, report)
            check_fifo(http, sorted(results), report)
            check_regenerated(http, results, report)
            if generations or swaps:
                soak(http, server.process.pid, generations, swaps, steps, report)
            if server.process.poll() is not None:
                report.problems.append("the server died")
    finally:
        server.stop()
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return report


def markdown(report: Report, command: str) -> str:
    lat = sorted(report.latencies) or [0.0]
    n = report.clients * report.jobs_per_client
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    return f"""# Reliability figures

Produced by `{command}` on {datetime.date.today().isoformat()} (2 shared CPU cores, other work running; the
figures are for the record, the checks are about correctness). Demo model `{DEMO.name}`, 64x64, Euler,
{report.steps} steps.

## Concurrent clients

| | |
| --- | --- |
| clients x jobs | {report.clients} x {report.jobs_per_client} = {n} txt2img jobs |
| wall time | {report.load_seconds:.1f} s ({n / report.load_seconds if report.load_seconds else 0:.2f} jobs/s) |
| latency per request (queue wait included) | median {statistics.median(lat):.1f} s, p95 {p95:.1f} s, max {lat[-1]:.1f} s |
| every answer carries its own seed, prompt, CFG, steps, size (info and infotext) | {"yes" if not [p for p in report.problems if "info" in p] else "NO"} |
| jobs lost | {sum(1 for p in report.problems if "lost" in p)} |
| queue order FIFO, no overlap (job records' created/started/finished) | {"yes" if report.fifo_ok else "NO"} |
| sampled jobs regenerated alone give identical pixels | {"yes" if report.regenerated_ok else "NO"} |

## Soak

| | |
| --- | --- |
| generations / checkpoint swaps | {report.soak_generations} / {report.soak_swaps} (demo model <-> a fixture SD1 checkpoint, RAM cache of 1) |
| wall time | {report.soak_seconds:.1f} s |
| server RSS at start of soak | {report.rss_start_mb:.0f} MB |
| RSS after warm-up (both models loaded once; median of the next {report.rss_window} samples) | {report.rss_warm_mb:.0f} MB |
| RSS at the end (median of the last {report.rss_window} samples) / max | {report.rss_end_mb:.0f} MB / {report.rss_max_mb:.0f} MB |
| growth after warm-up | {100 * report.rss_growth:+.1f} % (limit 5 %) |

Problems: {"none" if not report.problems else "; ".join(report.problems)}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--write", type=Path, help="write the figures as markdown to this file")
    args = parser.parse_args()
    report = run(args.clients, args.jobs, args.steps, args.generations, args.swaps)
    command = "HF_HUB_OFFLINE=1 python bench/load_test.py" + "".join(
        f" --{k} {getattr(args, k)}" for k in ("clients", "jobs", "steps", "generations", "swaps"))
    text = markdown(report, command)
    print(text)
    if args.write:
        args.write.write_text(text)
    ok = report.ok and report.rss_growth < 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
