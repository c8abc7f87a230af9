"""Raw kernel rates per dtype on this CPU: a 1024² matmul and a 3×3 conv (320 channels, 32×32, batch 2).

    python bench/kernels.py [--threads 1]

They say what any precision setting can gain here: bf16/fp16 only pay off where the CPU has native
instructions for them (AMX-BF16, AVX512-BF16; see webui/engine/devices.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, set_threads  # noqa: E402

import torch  # noqa: E402


def rate(fn, flop: float, min_time: float = 1.0) -> float:
    start = time.perf_counter()
    fn()   # warm-up; when it alone takes over a second (emulated dtypes), it is the measurement
    if time.perf_counter() - start > min_time:
        return flop / (time.perf_counter() - start) / 1e9
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time or runs < 2:
        fn()
        runs += 1
    return flop * runs / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    n = 1024
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = str(dtype).rsplit(".", 1)[-1]
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        emit("matmul_gflops", rate(lambda: a @ b, 2 * n ** 3), "GFLOP/s", dtype=name, threads=args.threads)
        conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(dtype)
        x = torch.randn(2, 320, 32, 32).to(dtype)
        with torch.no_grad():
            emit("conv3x3_gflops", rate(lambda: conv(x), 2 * 320 * 320 * 9 * 2 * 32 * 32), "GFLOP/s", dtype=name,
                 threads=args.threads)


if __name__ == "__main__":
    main()
