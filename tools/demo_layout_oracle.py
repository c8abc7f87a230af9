"""How much of the layout does x_t still show? (docs/demo_model.md, "Why position was not learned without the heads (G1)")

For single objects in a corner, the ideal reader knows the clean latent x0 up to the quadrant: it picks, among x0
and its three mirror images, the one closest to x_t (the maximum-likelihood choice under Gaussian noise). Its
accuracy at timestep t bounds what a UNet can read from x_t alone there; chance is 0.25. The latents are the
training cache of a `train_demo_model.py` run, normalised per channel and then scaled to each candidate std.

    python tools/demo_layout_oracle.py <work-dir>/latents.pt [--stds 1,0.5,0.25]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_model import sd_alphas_cumprod  # noqa: E402

TIMESTEPS = (999, 950, 900, 800, 700, 600, 500, 400, 300)


def corner_latents(cache: Path, limit: int) -> torch.Tensor:
    saved = torch.load(cache, weights_only=False)
    latents, scenes = saved["latents"], saved["scenes"]
    x = (latents - latents.mean(dim=(0, 2, 3), keepdim=True)) / latents.std(dim=(0, 2, 3), keepdim=True)
    keep = [i for i, s in enumerate(scenes) if s.count == 1 and s.positions[0] != "center"][:limit]
    return x[keep]


def oracle_accuracy(x0: torch.Tensor, t: int, std: float, offset_noise: float, gen: torch.Generator) -> float:
    ac = sd_alphas_cumprod().float()
    a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
    noise = torch.randn(x0.shape, generator=gen) + offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1,
                                                                              generator=gen)
    x_t = a * std * x0 + s * noise
    candidates = torch.stack([x0, x0.flip(-1), x0.flip(-2), x0.flip(-1, -2)], 1) * (a * std)
    distance = ((x_t[:, None] - candidates) ** 2).sum(dim=(2, 3, 4))
    return (distance.argmin(1) == 0).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("latents", type=Path, help="latents.pt from a train_demo_model.py work dir")
    ap.add_argument("--stds", default="1,0.5,0.3,0.2", help="latent standard deviations to compare")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--offset-noise", type=float, default=0.3)
    args = ap.parse_args(argv)
    x0 = corner_latents(args.latents, args.images)
    stds = [float(v) for v in args.stds.split(",")]
    gen = torch.Generator().manual_seed(0)
    print("t    " + "  ".join(f"std {s:<4}" for s in stds))
    for t in TIMESTEPS:
        row = [oracle_accuracy(x0, t, s, args.offset_noise, gen) for s in stds]
        print(f"{t:<4} " + "  ".join(f"{r:8.2f}" for r in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
