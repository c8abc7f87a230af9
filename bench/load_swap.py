"""Checkpoint load and swap times and the RSS they need, through the engine's model manager.

    python bench/load_swap.py --model sd15 [--other demo] [--vae sd15-vae] [--threads 1]

In one process, in this order:
  1. cold load: the file is first evicted from the OS page cache (posix_fadvise DONTNEED on that file only),
     so the read comes from disk; timed with the RSS peak of the load;
  2. swap away to a small model (--other), then back: not cached in RAM (cache size 1) but in the page cache;
  3. cache size 2: swap away and back again: the model comes from the RAM cache;
  4. VAE change to a separate VAE file and back: timed, and the UNet must be the same object with the
     same weight memory afterwards (a VAE change never reloads the UNet).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GB, emit, evict_from_page_cache, peak_rss, rss_bytes, set_threads, timer  # noqa: E402
import models  # noqa: E402


def timed_load(engine, path: Path):
    with peak_rss() as win, timer() as t:
        model = engine.load_checkpoint(path)
    return model, t["s"], win


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--other", default="demo")
    ap.add_argument("--vae", default="sd15-vae", help="a full-size VAE file kind from fullsize.py, or 'tiny'")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    tag = dict(model=args.model, threads=args.threads)
    path, other = models.checkpoint_path(args.model), models.checkpoint_path(args.other)
    engine = models.make_engine(ckpt_cache=1)
    vae_dir = engine.paths.vae_dir
    vae_dir.mkdir(parents=True, exist_ok=True)
    vae_file = vae_dir / "bench-vae.safetensors"
    if args.vae == "tiny":
        from webui.testing.fixtures import write_vae
        write_vae(vae_file, seed=5)
    else:
        import fullsize
        vae_file.symlink_to(fullsize.checkpoint(args.vae))
    engine.models.refresh()

    evict_from_page_cache(path)
    base = rss_bytes()
    model, seconds, win = timed_load(engine, path)
    size = models.model_bytes(model)
    emit("load_cold", seconds, "s", **tag, file_gb=path.stat().st_size / 1e9)
    emit("model_in_memory", size / GB, "GiB", **tag)
    emit("rss_peak_load", win.delta / size, "x model", **tag, peak_gib=win.peak_rss / GB, delta_gib=win.delta / GB,
         start_gib=win.start_rss / GB)

    model = None   # the engine alone decides what stays in memory (holding it here kept two SDXLs: OOM)
    _, seconds, _ = timed_load(engine, other)
    emit("swap_to_small_uncached", seconds, "s", **tag, other=args.other, rss_after_gib=(rss_bytes() - base) / GB)
    model, seconds, win = timed_load(engine, path)
    emit("swap_uncached", seconds, "s", **tag, note="RAM cache 1, file in page cache")
    emit("rss_peak_swap_uncached", win.delta / size, "x model", **tag, delta_gib=win.delta / GB)

    engine.models.cache_size = 2
    model = None
    timed_load(engine, other)
    model, seconds, _ = timed_load(engine, path)
    emit("swap_cached", seconds, "s", **tag, note="RAM cache 2")

    unet, ptrs = model.unet, [p.data_ptr() for p in model.unet.parameters()]
    with timer() as t:
        engine.set_vae(vae_file.name)
    emit("vae_change_first", t["s"], "s", **tag, note="reads the VAE file")
    with timer() as t:
        engine.set_vae("Automatic")
    emit("vae_change_back", t["s"], "s", **tag)
    with timer() as t:
        engine.set_vae(vae_file.name)
    emit("vae_change_cached", t["s"], "s", **tag)
    same = engine.models.current.unet is unet and [p.data_ptr() for p in unet.parameters()] == ptrs
    emit("vae_change_keeps_unet", float(same), "bool", **tag)


if __name__ == "__main__":
    main()
