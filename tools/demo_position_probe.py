"""Does the demo model place the object where the prompt says? (docs/demo_model.md, "Why position was not learned without the heads (G1)")

The same 8 colour/shape/background prompts are generated at each of the 5 positions with one seed, and the
object's position is read back as `eval_demo_model.py` reads it. A model that ignores the position words draws
the same 8 images for every position and scores chance (0.20).

    HF_HUB_OFFLINE=1 python tools/demo_position_probe.py <diffusers folder from train_demo_model.py> \\
        [--vae <vae folder>] [--grid probe.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_demo_model import read_image  # noqa: E402
from shapes_dataset import POSITIONS  # noqa: E402
from train_demo_model import load_model, sample_euler_ancestral  # noqa: E402

SCENES = [("red", "square", "white"), ("blue", "circle", "yellow"), ("yellow", "triangle", "blue"),
          ("white", "square", "black"), ("green", "circle", "white"), ("orange", "triangle", "purple"),
          ("black", "square", "green"), ("purple", "circle", "orange")]


def probe(parts: dict, seed: int) -> tuple[float, list[np.ndarray]]:
    hits, rows = 0, []
    for position in POSITIONS:
        prompts = [f"a large {c} {s} in the {position} on a {b} background" for c, s, b in SCENES]
        images = sample_euler_ancestral(parts, prompts, seed=seed)
        read = [read_image(img).position for img in images]
        right = sum(r == position for r in read)
        hits += right
        print(f"{position:>12}: {right}/{len(read)} read as {read}", flush=True)
        rows.append(np.concatenate(images, axis=1))
    return hits / (len(POSITIONS) * len(SCENES)), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path,
                    help="a diffusers folder (unet/, text_encoder/, vae/) or a single-file checkpoint")
    ap.add_argument("--vae", type=Path, help="decode with this VAE folder instead (e.g. the polished decoder)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--grid", type=Path, help="write the images: one row per position")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = load_model(args.folder)
    if args.vae:
        from diffusers import AutoencoderKL
        parts["vae"] = AutoencoderKL.from_pretrained(args.vae).eval()
    with torch.no_grad():
        accuracy, rows = probe(parts, args.seed)
    print(f"position accuracy {accuracy:.2f} (chance 0.20)")
    if args.grid:
        from PIL import Image
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
