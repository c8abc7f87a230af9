"""Shared benchmark helpers: peak-RSS windows, timing, machine description, results as JSON lines.

Every measurement script prints one JSON object per figure on stdout (prefixed `RESULT `), so `run_all.py`
can run each in its own process (RSS peaks stay per-measurement) and collect the figures.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GB = 1024 ** 3
CACHE_DIR = Path(os.environ.get("SD_BENCH_CACHE", Path.home() / ".cache" / "sd-studio-bench"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PeakWindow:
    start_rss: int = 0
    peak_rss: int = 0
    end_rss: int = 0

    @property
    def delta(self) -> int:
        """Peak growth over the RSS at the window's start."""
        return self.peak_rss - self.start_rss


@contextmanager
def peak_rss(interval: float = 0.005):
    """Peak RSS inside the block: a sampling thread reading /proc/self/statm every `interval` seconds.

    (Resetting VmHWM through /proc/self/clear_refs would be exact but is not allowed in every container.)"""
    win = PeakWindow(start_rss=rss_bytes())
    win.peak_rss = win.start_rss
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            win.peak_rss = max(win.peak_rss, rss_bytes())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield win
    finally:
        stop.set()
        thread.join()
        win.end_rss = rss_bytes()
        win.peak_rss = max(win.peak_rss, win.end_rss)


@contextmanager
def timer():
    box = {}
    start = time.perf_counter()
    yield box
    box["s"] = time.perf_counter() - start


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def loadavg1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def emit(name: str, value: float, unit: str, **extra) -> dict:
    """Print one figure as a `RESULT {json}` line; `extra` says how it was measured."""
    row = {"name": name, "value": value, "unit": unit, "load1": loadavg1(), **extra}
    print("RESULT " + json.dumps(row), flush=True)
    return row


def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def evict_from_page_cache(path: Path) -> None:
    """Drop one file's pages from the OS cache (POSIX_FADV_DONTNEED), so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def machine() -> dict:
    import torch
    info = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set((re.search(r"flags\s*:\s*(.*)", info) or [None, ""])[1].split())
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "simd": " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))),
        "ram_gib": round(int(mem.group(1)) / 1024 ** 2, 1) if mem else None,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
