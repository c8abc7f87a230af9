"""LoRA apply/remove timings (prints a table, and RESULT lines for bench/run_all.py).

    python bench/bench_lora.py [--family sd1|sdxl] [--rank 8] [--repeats 5]     # tiny fixture model
    python bench/bench_lora.py --model sd15 [--rank 8] [--repeats 2]             # full-size (bench/models.py)

The network covers every Linear and Conv2d of the UNet and text encoders (kohya names from the model's
own module names), so the work scales like a full LoRA would on a real model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import GB, emit, peak_rss  # noqa: E402

from webui.engine.engine import Engine  # noqa: E402
from webui.engine.networks.lora_keys import build_key_map  # noqa: E402
from webui.engine.paths import DataPaths  # noqa: E402
from webui.testing.fixtures import write_checkpoint  # noqa: E402


def write_full_lora(path: Path, model, rank: int, seed: int) -> int:
    """A LoRA on every Linear/Conv2d the key map knows, under its first kohya name; returns module count."""
    g = torch.Generator().manual_seed(seed)
    tensors, seen = {}, set()
    for key, target in build_key_map(model).items():
        module = target.module
        if target.name in seen or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        seen.add(target.name)
        w = module.weight
        kernel = tuple(w.shape[2:])
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], *kernel, generator=g) * 0.1
        tensors[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, *((1, 1) if kernel else ()), generator=g) * 0.1
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return len(seen)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_place_rows(nets, model, weights, repeats: int) -> list[tuple[str, float]]:
    """The GPU way (weights edited in place, originals copied to CPU RAM once), timed here on CPU."""
    from webui.engine.networks import NetworkApplier

    swap, nets.applier = nets.applier, NetworkApplier(in_place=True)
    try:
        first = timed(lambda: (nets.activate(model, "<lora:a:0.5>"), nets.deactivate(model)), 1)
        nets.activate(model, "<lora:a:0.5>")
        changes = []
        for _ in range(repeats):   # a job with another weight: restore from the backups, compute, add in place
            start = time.perf_counter()
            nets.activate(model, f"<lora:a:{next(weights) / 1000}>")
            changes.append(time.perf_counter() - start)
        restore = timed(lambda: nets.deactivate(model), 1)
    finally:
        nets.applier.restore(model)
        nets.applier = swap
    return [("in place: first apply (+ CPU copies of the originals) + restore", first),
            ("in place: another weight (restore + compute + add)", statistics.median(changes)),
            ("in place: restore (copy the originals back)", restore)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", help="a bench model (sd15, sdxl, demo, tiny-sd1, ...) instead of --family")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpts = root / "models" / "Stable-diffusion"
        ckpts.mkdir(parents=True)
        if args.model:
            import models
            (ckpts / f"{args.family}.safetensors").symlink_to(models.checkpoint_path(args.model))
        else:
            write_checkpoint(ckpts / f"{args.family}.safetensors", args.family)
        engine = Engine(DataPaths.create(root), device="cpu")
        model = engine.load_checkpoint(f"{args.family}.safetensors")
        lora_dir = engine.paths.lora_dir
        lora_dir.mkdir(parents=True)
        n = write_full_lora(lora_dir / "a.safetensors", model, args.rank, 0)
        write_full_lora(lora_dir / "b.safetensors", model, args.rank, 1)
        nets, lib = engine.networks, engine.networks.library
        rows = []
        rss = peak_rss()
        win = rss.__enter__()

        def fresh_apply(prompt: str):
            lib._parsed.clear()
            nets.applier._states.clear()
            nets.activate(model, prompt)
            nets.deactivate(model)

        rows.append(("parse + compute + apply + remove, 1 LoRA (cold)", timed(lambda: fresh_apply("<lora:a:1>"), args.repeats)))
        weights = iter(range(1, 10 ** 6))

        def new_weight():
            nets.activate(model, f"<lora:a:{next(weights) / 1000}>")
            nets.deactivate(model)

        rows.append(("compute + apply + remove, new weight (file cached)", timed(new_weight, args.repeats)))
        nets.activate(model, "<lora:a:0.8>")
        nets.deactivate(model)
        applies, removes = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = nets.activate(model, "<lora:a:0.8>").report
            middle = time.perf_counter()
            nets.deactivate(model)
            removes.append(time.perf_counter() - middle)
            applies.append(middle - start)
            assert report.reused
        rows.append(("re-apply same set + weights (cached patched weights)", statistics.median(applies)))
        rows.append(("remove (swap the original tensors back)", statistics.median(removes)))
        rows.append(("compute + apply + remove, 2 LoRAs", timed(lambda: fresh_apply("<lora:a:0.7> <lora:b:0.4>"), args.repeats)))
        rss.__exit__(None, None, None)
        rows += in_place_rows(nets, model, weights, args.repeats)
    tag = dict(model=args.model or f"tiny-{args.family}", threads=args.threads, rank=args.rank, modules=n)
    keys = ("lora_cold", "lora_new_weight", "lora_reapply", "lora_remove", "lora_two",
            "lora_inplace_first", "lora_inplace_new_weight", "lora_inplace_restore")
    for key, (label, seconds) in zip(keys, rows):
        emit(key, seconds, "s", **tag, what=label)
    emit("lora_rss_delta", win.delta / GB, "GiB", **tag, what="RSS growth while applying/removing (patched-weight cache)")
    print(f"LoRA benchmark: {args.model or args.family + ' fixture'}, {n} modules, rank {args.rank}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"| {'operation':<52} | {'ms':>9} |")
    print(f"|{'-' * 54}|{'-' * 11}|")
    for label, seconds in rows:
        print(f"| {label:<52} | {seconds * 1000:9.2f} |")


if __name__ == "__main__":
    main()
