"""Time per UNet step inside our generation against a bare loop over the same UNet, plus VAE decode and RSS.

    python bench/step_time.py --model sd15 --size 256 --steps 4 --threads 1 [--precision fp32|bf16]
           [--channels-last] [--compile] [--repeats 2]

The bare loop is written here, not taken from the app: the scaled-linear schedule's sigmas at evenly spaced
timesteps (what "Euler" with the Automatic schedule uses), a CFG batch of 2 through the UNet, and the Euler
update. Same UNet module, same resolution, same dtype/autocast. Our step time is the interval between
consecutive progress callbacks (one sampler step each); the bare step time is timed per step. Runs
alternate (ours, bare, ours, bare, ...) so machine contention hits both alike; the medians are compared.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GB, emit, median, peak_rss, set_threads, timer  # noqa: E402
import models  # noqa: E402

import torch  # noqa: E402


def bare_sigmas(steps: int) -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    log_sigmas = (((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)) ** 0.5).log()
    t = torch.linspace(999, 0, steps, dtype=torch.float64)
    low = t.floor().long().clamp(max=998)
    w = t - low
    sig = ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()
    return torch.cat([sig, sig.new_zeros(1)]).float()


@torch.no_grad()
def bare_loop(unet, context: torch.Tensor, added: dict | None, shape: tuple, steps: int, cfg: float,
              autocast: torch.dtype | None) -> list[float]:
    """Euler + CFG over `unet`; returns the seconds of each step."""
    sigmas = bare_sigmas(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ts = torch.linspace(999, 0, steps)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        sigma = sigmas[i]
        x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5
        ctx = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            eps = unet(x_in, ts[i].expand(2), encoder_hidden_states=context, added_cond_kwargs=added).sample.float()
        uncond, cond = eps.chunk(2)
        eps = uncond + cfg * (cond - uncond)
        x = x + eps * (sigmas[i + 1] - sigma)   # Euler: d = (x - denoised) / sigma = eps
        times.append(time.perf_counter() - start)
    return times


def bare_inputs(model, p) -> tuple[torch.Tensor, dict | None, tuple]:
    """Conditioning for the bare loop, encoded once with the model's own text encoders (not timed)."""
    from webui.engine.processing import _CondCache, _latent_scale, _time_ids
    conds = _CondCache(model, 1)
    cond, uncond = conds.batch([p.prompt], [p.negative_prompt], torch.device("cpu"), steps=p.steps)
    c, u = cond.at(0).cond, uncond.at(0).cond
    context = torch.cat([u.context, c.context])
    added = None
    time_ids = _time_ids(model, p, torch.device("cpu"))[0]
    if c.pooled is not None and time_ids is not None:
        added = {"text_embeds": torch.cat([u.pooled, c.pooled]), "time_ids": time_ids["time_ids"].expand(2, -1)}
    scale = _latent_scale(model)
    return context, added, (1, model.latent_channels, p.height // scale, p.width // scale)


def ours(engine, p) -> tuple[list[float], float, object]:
    stamps = []
    with timer() as t:
        result = engine.txt2img(p, progress=lambda info: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])], t["s"], result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (the first image pays the compile)")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare loop (ours only)")
    args = ap.parse_args()
    set_threads(args.threads)
    tag = dict(model=args.model, size=args.size, threads=args.threads, precision=args.precision,
               channels_last=args.channels_last, compiled=args.compile)
    options = {"precision": args.precision, "compile": args.compile}
    if args.channels_last:
        if not models.engine_supports("channels_last"):
            emit("unsupported", 0, "", what="channels_last", **tag)
            return
        options["channels_last"] = True
    if args.precision != "fp32" and not models.engine_supports("precision"):
        emit("unsupported", 0, "", what="Engine(precision=...)", **tag)
        return
    engine = models.make_engine(**options)
    model = engine.load_checkpoint(models.checkpoint_path(args.model))
    p = models.params(width=args.size, height=args.size, steps=args.steps)
    context, added, shape = bare_inputs(model, p)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    our_steps, bare_steps, totals = [], [], []
    rss = None
    for r in range(args.repeats):
        with peak_rss() as win:
            steps, total, result = ours(engine, p)
        rss = win if rss is None or win.peak_rss > rss.peak_rss else rss
        our_steps += steps
        totals.append(total)
        if not args.no_bare:
            bare_steps += bare_loop(model.unet, context, added, shape, args.steps, p.cfg_scale, autocast)[1:]
    ours_s = median(our_steps)
    emit("step_ours", ours_s, "s", **tag, n=len(our_steps), min=min(our_steps))
    if bare_steps:
        bare_s = median(bare_steps)
        emit("step_bare", bare_s, "s", **tag, n=len(bare_steps), min=min(bare_steps))
        emit("overhead_ratio", ours_s / bare_s, "x", **tag, min_ratio=min(our_steps) / min(bare_steps))
    emit("image_total", min(totals), "s", **tag, steps=args.steps)
    if args.compile:
        emit("first_image_with_compile", totals[0], "s", **tag, steps=args.steps)
    emit("rss_peak_generation", rss.peak_rss / GB, "GiB", **tag, delta=rss.delta / GB)
    decode_times = []
    from webui.engine.processing import decode_latents
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        with timer() as t:
            decode_latents(model, latents)
        decode_times.append(t["s"])
    emit("vae_decode", min(decode_times), "s", **tag)
    out = Path(models.CACHE_DIR) / f"img-{args.model}-{args.size}-{args.steps}-{args.precision}.png"
    result.images[0].save(out)
    emit("image_file", 0, "", **tag, path=str(out))


if __name__ == "__main__":
    main()
