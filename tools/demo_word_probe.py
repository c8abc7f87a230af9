"""Which caption words does the demo model use, and at which noise levels? (docs/demo_model.md)

Held-out scenes are rendered and encoded with the model's own VAE. Each latent is noised to timestep t, and the
UNet's x0 prediction is compared with the clean latent twice: once with the full caption, once with one word
swapped for another value of the same attribute ("red" -> "blue", "circle" -> "triangle", ...), on the same
noise. The ratio of the two errors says how much the model relies on that word there: 1.00 means the word is
ignored; the higher, the more the prediction depends on it. Position uses single-object scenes only.

    HF_HUB_OFFLINE=1 python tools/demo_word_probe.py [models/Stable-diffusion/demo-shapes-v1.safetensors]
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_dataset import COLOURS, POSITIONS, SHAPES, caption, eval_scenes, render  # noqa: E402
from train_demo_model import SCALE_FACTOR, load_model, sd_alphas_cumprod, to_tensor  # noqa: E402

ATTRIBUTES = ("colour", "background", "shape", "position")
TIMESTEPS = (100, 300, 500, 700, 900)


def swapped(scene, attribute: str, rng: random.Random):
    """The scene with `attribute` changed to another value (the background never equals the object colour)."""
    if attribute == "position":
        return replace(scene, positions=(rng.choice([p for p in POSITIONS if p != scene.positions[0]]),))
    if attribute == "shape":
        return replace(scene, shape=rng.choice([s for s in SHAPES if s != scene.shape]))
    taken = {scene.colour, scene.background}
    return replace(scene, **{attribute: rng.choice([c for c in COLOURS if c not in taken])})


@torch.no_grad()
def x0_errors(parts: dict, latents: torch.Tensor, texts: list[str], t: int, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE between the clean latents and the UNet's x0 prediction from x_t."""
    ac = sd_alphas_cumprod().float()[t]
    x_t = ac.sqrt() * latents + (1 - ac).sqrt() * noise
    ids = parts["tokenizer"](texts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    eps = parts["unet"](x_t, torch.full((len(texts),), t), parts["text_encoder"](ids).last_hidden_state).sample
    x0 = (x_t - (1 - ac).sqrt() * eps) / ac.sqrt()
    return (x0 - latents).pow(2).mean(dim=(1, 2, 3))


@torch.no_grad()
def probe(parts: dict, n: int, seed: int) -> dict[str, dict[int, float]]:
    scenes = eval_scenes(n)
    rng = random.Random(seed)
    images = np.stack([render(s, 64, random.Random(seed + i)) for i, s in enumerate(scenes)])
    latents = parts["vae"].encode(to_tensor(images)).latent_dist.mode() * SCALE_FACTOR
    gen = torch.Generator().manual_seed(seed)
    noises = {t: torch.randn(latents.shape, generator=gen) for t in TIMESTEPS}
    right = {t: x0_errors(parts, latents, [caption(s) for s in scenes], t, noises[t]) for t in TIMESTEPS}
    table = {}
    for attribute in ATTRIBUTES:
        keep = [i for i, s in enumerate(scenes) if attribute != "position" or len(s.positions) == 1]
        texts = [caption(swapped(scenes[i], attribute, rng)) for i in keep]
        table[attribute] = {t: (x0_errors(parts, latents[keep], texts, t, noises[t][keep]).mean()
                                / right[t][keep].mean()).item() for t in TIMESTEPS}
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, nargs="?", default=Path("models/Stable-diffusion/demo-shapes-v1.safetensors"),
                    help="a single-file checkpoint or a diffusers folder (unet/, text_encoder/, vae/)")
    ap.add_argument("--vae", type=Path, help="encode with this VAE folder instead")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = load_model(args.model)
    if args.vae:
        from diffusers import AutoencoderKL
        parts["vae"] = AutoencoderKL.from_pretrained(args.vae).eval()
    table = probe(parts, args.prompts, args.seed)
    print("x0 error with the word swapped / with the right word (1.00 = the word is ignored)")
    print(f"{'t':>12}" + "".join(f"{t:>8}" for t in TIMESTEPS))
    for attribute, row in table.items():
        print(f"{attribute:>12}" + "".join(f"{row[t]:8.2f}" for t in TIMESTEPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
