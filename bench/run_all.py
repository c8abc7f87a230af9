"""Run every benchmark, one process per measurement, print the table and refresh docs/performance.md.

    HF_HUB_OFFLINE=1 python bench/run_all.py            # full-size SD1.5 (+ demo model), 1 and 2 threads
    HF_HUB_OFFLINE=1 python bench/run_all.py --quick    # tiny fixture models: checks the scripts in ~2 min
    HF_HUB_OFFLINE=1 python bench/run_all.py --only load_swap,step_time --threads 1
    HF_HUB_OFFLINE=1 python bench/run_all.py --sdxl     # also SDXL (fp32 SDXL is ~14 GB: run it alone; a step and a load)
    HF_HUB_OFFLINE=1 python bench/run_all.py --render   # only rewrite the doc from the stored results

Figures accumulate in $SD_BENCH_CACHE/results.json (default ~/.cache/sd-studio-bench), keyed by the
command that produced them, so a partial run refreshes only its own rows. Only one full-size model is in
memory at a time (the measurements run one after another). The doc's generated part sits between the
`<!-- bench:begin -->` / `<!-- bench:end -->` markers; the prose around it is kept.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE_DIR, REPO, loadavg, machine  # noqa: E402

RESULTS = CACHE_DIR / "results.json"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def plan(quick: bool, threads: list[int], sdxl: bool) -> list[tuple[str, list[str]]]:
    """(group, argv) of every measurement, cheapest first."""
    big, size, steps, small = ("tiny-sd1", "64", "4", "tiny-sdxl") if quick else ("sd15", "256", "4", "demo")
    vae = "tiny" if quick else "sd15-vae"
    demo = "tiny-sd1" if quick else "demo"
    runs: list[tuple[str, list[str]]] = []
    for t in threads:
        runs.append(("kernels", ["kernels.py", "--threads", str(t)]))
    for t in threads:
        runs.append(("load_swap", ["load_swap.py", "--model", big, "--other", small, "--vae", vae, "--threads", str(t)]))
    for t in threads:   # 3 runs of ours and of the bare loop, alternating: enough samples for a 3% question
        runs.append(("step_time", ["step_time.py", "--model", big, "--size", size, "--steps", steps, "--repeats", "3",
                                   "--threads", str(t)]))
    # the overhead question (≤ 1.03×) needs many steps: 4 alternating runs of 12 steps at a size where steps are short
    runs.append(("overhead", ["step_time.py", "--model", big, "--size", "64", "--steps", "12", "--repeats", "4",
                              "--threads", str(threads[-1])]))
    for prec in ("fp32", "bf16"):
        runs.append(("precision", ["step_time.py", "--model", demo, "--size", "64", "--steps", "8", "--repeats", "1",
                                   "--precision", prec, "--threads", str(threads[0])]))
    runs.append(("precision", ["step_time.py", "--model", big, "--size", "64", "--steps", "2", "--repeats", "1",
                               "--precision", "fp32", "--threads", str(threads[-1])]))
    runs.append(("precision", ["step_time.py", "--model", big, "--size", "64", "--steps", "2", "--repeats", "1",
                               "--precision", "bf16", "--no-bare", "--threads", str(threads[-1])]))
    runs.append(("channels_last", ["step_time.py", "--model", big, "--size", size, "--steps", steps, "--repeats", "1",
                                   "--channels-last", "--no-bare", "--threads", str(threads[0])]))
    for flag in ([], ["--compile"]):
        runs.append(("compile", ["step_time.py", "--model", demo, "--size", "64", "--steps", "8", "--repeats", "3"]
                     + flag + ["--threads", str(threads[0])]))
    runs.append(("lora", ["bench_lora.py", "--model", big, "--repeats", "2" if not quick else "3",
                          "--threads", str(threads[0])]))
    for model in dict.fromkeys(["demo", big]):
        runs.append(("server_start", ["server_start.py", "--model", model, "--threads", str(threads[0])]))
    if sdxl:
        runs.append(("sdxl", ["load_swap.py", "--model", "sdxl", "--other", "demo", "--vae", "tiny", "--threads", "2"]))
        runs.append(("sdxl", ["step_time.py", "--model", "sdxl", "--size", "512", "--steps", "2", "--repeats", "1",
                              "--threads", "2"]))
    return runs


def run_one(argv: list[str]) -> list[dict]:
    cmd = [sys.executable, str(REPO / "bench" / argv[0])] + argv[1:]
    shown = "HF_HUB_OFFLINE=1 python bench/" + " ".join(shlex.quote(a) for a in argv)
    print(f"$ {shown}   (load {loadavg()})", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        rows.append({"name": "error", "value": float("nan"), "unit": "", "error": tail[:300]})
        print(f"  FAILED: {tail}", flush=True)
    for row in rows:
        row["command"] = shown
        row["when"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return rows


def load_results() -> dict[str, list[dict]]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict[str, list[dict]]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))


# ------------------------------------------------------------------------------------------- rendering

def _fmt(v: float, unit: str) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "failed"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "bool":
        return "yes" if v else "NO"
    return f"{v:.3g} {unit}".strip()


_DETAIL_KEYS = ("model", "size", "threads", "precision", "dtype", "other", "note", "rank", "modules", "what",
                "delta_gib", "peak_gib", "min_ratio", "file_gb", "error")


def _detail(row: dict) -> str:
    parts = []
    for k in _DETAIL_KEYS:
        if k in row and row[k] not in (None, False, ""):
            v = row[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    if row.get("channels_last"):
        parts.append("channels_last")
    if row.get("compiled"):
        parts.append("torch.compile")
    return ", ".join(parts)


def psnr_rows(results: dict[str, list[dict]]) -> list[str]:
    """PSNR of each bf16 image against the fp32 image of the same model, size and step count."""
    from PIL import Image
    import numpy as np

    images = {}
    for rows in results.values():
        for r in rows:
            if r["name"] == "image_file" and Path(r["path"]).exists():
                images[(r["model"], r["size"], r["precision"], Path(r["path"]).name.split("-")[-2])] = r
    out = []
    for (model, size, prec, steps), r in sorted(images.items()):
        ref = images.get((model, size, "fp32", steps))
        if prec == "fp32" or ref is None:
            continue
        a = np.asarray(Image.open(r["path"]), dtype=np.float64)
        b = np.asarray(Image.open(ref["path"]), dtype=np.float64)
        mse = float(((a - b) ** 2).mean())
        value = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
        out.append(f"| {model} | {size}² | {steps} | {prec} vs fp32 | {value:.1f} dB | `{r['command']}` |")
    return out


def render(results: dict[str, list[dict]]) -> str:
    m = machine()
    lines = [BEGIN, "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, SIMD flags: {m['simd']}; torch {m['torch']} "
             f"(CPU capability {m['cpu_capability']}), Python {m['python']}. Shared machine: the load average at "
             "the start of each command is in the last column.", "",
             "| group | figure | value | details | command | load (1 min) | when |", "|---|---|---|---|---|---|---|"]
    for group, rows in sorted(results.items(), key=lambda kv: kv[0]):
        for r in rows:
            if r["name"] == "image_file":
                continue
            lines.append(f"| {group.split('|')[0]} | {r['name']} | {_fmt(r['value'], r['unit'])} | {_detail(r)} | "
                         f"`{r['command']}` | {r.get('load1', '')} | {r.get('when', '')} |")
    psnr = psnr_rows(results)
    if psnr:
        lines += ["", "PSNR of reduced-precision images against fp32 (same seed, prompt and sampler):", "",
                  "| model | size | steps | compared | PSNR | command |", "|---|---|---|---|---|---|"] + psnr
    lines += ["", END]
    return "\n".join(lines)


def write_doc(results: dict[str, list[dict]]) -> None:
    table = render(results)
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: table, text, flags=re.S)
    else:
        text = "# Performance\n\n" + table + "\n"
    DOC.write_text(text)
    print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny fixture models (checks the scripts)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--only", help="comma-separated groups: kernels, load_swap, step_time, precision, "
                                   "overhead, channels_last, compile, lora, server_start, sdxl")
    ap.add_argument("--sdxl", action="store_true", help="also the SDXL load and step (fp32 SDXL is ~14 GB: run it alone)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/performance.md from stored results")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    results = load_results()
    if not args.render:
        threads = [int(t) for t in args.threads.split(",")]
        only = set(args.only.split(",")) if args.only else None
        for group, argv in plan(args.quick, threads, args.sdxl or bool(only and "sdxl" in only)):
            if only and group not in only:
                continue
            rows = run_one(argv)
            results[f"{group}|{' '.join(argv)}"] = rows
            save_results(results)
            for r in rows:
                if r["name"] != "image_file":
                    print(f"  {r['name']:<28} {_fmt(r['value'], r['unit']):>14}   {_detail(r)}", flush=True)
    if args.quick and not args.render:
        return   # tiny-model figures never go into the doc
    if not args.no_doc:   # only the measurements the full plan makes today (older commands' rows are stale)
        current = {f"{group}|{' '.join(argv)}" for threads in ([1, 2], [1], [2]) for group, argv in plan(False, threads, True)}
        write_doc({k: v for k, v in results.items() if k in current})


if __name__ == "__main__":
    main()
