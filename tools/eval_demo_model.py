"""Measure the demo model's prompt adherence on held-out prompts.

For each held-out scene (tools/shapes_dataset.eval_scenes) it generates one image from the full caption with a
fixed seed, then reads back from the pixels: background colour, object colour, shape (by contour approximation),
position (quadrant of the centroid) and count (foreground blobs). It prints the accuracy per attribute and writes
a JSON of figures and a sample grid.

By default it generates through the project's engine (webui.engine.engine.Engine), exactly as a user would.
`--private-loop` uses a small self-contained Euler-ancestral + CFG loop over diffusers modules instead (useful
while developing the model, or to cross-check the engine).

    HF_HUB_OFFLINE=1 python tools/eval_demo_model.py --model models/Stable-diffusion/demo-shapes-v1.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the project root, for webui.engine
from shapes_dataset import COLOURS, Scene, caption, eval_scenes  # noqa: E402

ATTRIBUTES = ("colour", "background", "shape", "position", "count")
_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)


# ---------------------------------------------------------------- classifiers (pixels -> attributes)

@dataclass
class Reading:
    """Attributes read back from an image; None where nothing could be read."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    count: int


def nearest_colour(rgb: np.ndarray) -> str:
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)
    return _PALETTE_NAMES[int(d.argmin())]


def background_colour(img: np.ndarray) -> np.ndarray:
    """Median colour of a 2-pixel frame around the image (objects never touch all four sides)."""
    m = 2
    frame = np.concatenate([img[:m].reshape(-1, 3), img[-m:].reshape(-1, 3),
                            img[:, :m].reshape(-1, 3), img[:, -m:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def foreground_mask(img: np.ndarray, bg: np.ndarray, threshold: float = 70.0) -> np.ndarray:
    dist = np.sqrt(((img.astype(np.float32) - bg) ** 2).sum(axis=2))
    mask = (dist > threshold).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))


def blobs(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Masks of the connected foreground components at least `min_area` pixels large, largest first."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    keep.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [(labels == i).astype(np.uint8) for i in keep]


def _template(shape: str, area: float, cx: float, cy: float, size: tuple[int, int]) -> np.ndarray:
    """An ideal shape of the given area, centred (by centroid) like the blob, as a 0/1 mask."""
    out = np.zeros(size, np.uint8)
    s = 16  # sub-pixel precision
    if shape == "circle":
        r = (area / math.pi) ** 0.5
        cv2.circle(out, (round(cx * s), round(cy * s)), round(r * s), 1, -1, cv2.LINE_8, 4)
        return out
    if shape == "square":
        h = area ** 0.5 / 2
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    else:  # upright equilateral triangle, centroid 2/3 of the way down from the apex
        side = (4 * area / 3 ** 0.5) ** 0.5
        height = side * 3 ** 0.5 / 2
        top, bottom = cy - 2 * height / 3, cy + height / 3
        pts = [(cx, top), (cx + side / 2, bottom), (cx - side / 2, bottom)]
    poly = np.array([[round(x * s), round(y * s)] for x, y in pts], dtype=np.int32)
    cv2.fillPoly(out, [poly], 1, cv2.LINE_8, 4)
    return out


def shape_of(blob: np.ndarray) -> str:
    """Circle / square / triangle from the blob's outline.

    The outer contour is filled and compared (IoU) with an ideal circle, square and upright triangle of the
    same area and centroid; the best match wins. A 3-vertex `cv2.approxPolyDP` outline is a triangle outright.
    Template matching keeps working when edges are soft: a slightly rounded triangle approximates to 4 vertices
    and fills ~70% of its bounding box, which vertex counts and fill ratios alone misread as a circle.
    """
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    if len(cv2.approxPolyDP(c, 0.06 * cv2.arcLength(c, True), True)) == 3:
        return "triangle"
    filled = np.zeros_like(blob)
    cv2.drawContours(filled, [c], -1, 1, -1)
    ys, xs = np.nonzero(filled)
    area, cx, cy = float(len(xs)), xs.mean(), ys.mean()

    def iou(shape: str) -> float:
        t = _template(shape, area, cx, cy, blob.shape)
        return float((t & filled).sum()) / max(float((t | filled).sum()), 1.0)

    return max(("circle", "square", "triangle"), key=iou)


def position_of(blob: np.ndarray) -> str:
    ys, xs = np.nonzero(blob)
    h, w = blob.shape
    fx, fy = xs.mean() / w, ys.mean() / h
    if max(abs(fx - 0.5), abs(fy - 0.5)) < 0.14:
        return "center"
    return ("top" if fy < 0.5 else "bottom") + " " + ("left" if fx < 0.5 else "right")


def read_image(img: np.ndarray) -> Reading:
    """Read the attributes of an RGB uint8 image (any square size)."""
    bg = background_colour(img)
    found = blobs(foreground_mask(img, bg), min_area=max(4, round(img.shape[0] * img.shape[1] * 0.004)))
    if not found:
        return Reading(nearest_colour(bg), None, None, None, 0)
    main = found[0]
    core = cv2.erode(main, np.ones((3, 3), np.uint8))
    pixels = img[(core if core.any() else main).astype(bool)]
    return Reading(nearest_colour(bg), nearest_colour(np.median(pixels, axis=0)), shape_of(main),
                   position_of(main), len(found))


def score(scene: Scene, r: Reading) -> dict[str, bool | None]:
    """Per-attribute correctness; position is only scored for single-object scenes."""
    return {
        "colour": r.colour == scene.colour,
        "background": r.background == scene.background,
        "shape": r.shape == scene.shape,
        "position": (r.position == scene.positions[0]) if scene.count == 1 else None,
        "count": r.count == scene.count,
    }


def accuracies(scores: list[dict[str, bool | None]]) -> dict[str, float]:
    out = {}
    for a in ATTRIBUTES:
        vals = [s[a] for s in scores if s[a] is not None]
        out[a] = sum(vals) / len(vals) if vals else math.nan
    return out


# ---------------------------------------------------------------- generators (prompt -> image)

Generator = Callable[[str, int], np.ndarray]


def engine_generator(model: Path, steps: int, cfg: float, size: int, sampler: str = "Euler a",
                     init: Generator | None = None, strength: float = 0.75) -> Generator:
    """txt2img through the engine; with `init` (prompt, seed -> image), img2img from that image at `strength`."""
    from PIL import Image

    from webui.engine.engine import Engine
    from webui.engine.params import GenerationParams

    engine = Engine(device="cpu")
    engine.load_checkpoint(model)

    def generate(prompt: str, seed: int) -> np.ndarray:
        params = GenerationParams(prompt=prompt, negative_prompt="", steps=steps, sampler_name=sampler,
                                  cfg_scale=cfg, width=size, height=size, seed=seed)
        if init is None:
            return np.asarray(engine.txt2img(params).images[0].convert("RGB"))
        params.init_images, params.denoising_strength = [Image.fromarray(init(prompt, seed))], strength
        return np.asarray(engine.img2img(params).images[0].convert("RGB"))

    return generate


def private_generator(model: Path, steps: int, cfg: float, size: int) -> Generator:
    """Development-only generation: diffusers modules + our own Euler a loop (k-diffusion formulas)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_demo_model import load_components, sample_euler_ancestral

    parts = load_components(model)

    def generate(prompt: str, seed: int) -> np.ndarray:
        with torch.no_grad():
            img = sample_euler_ancestral(parts, [prompt], seed=seed, steps=steps, cfg=cfg, size=size)
        return img[0]

    return generate


def engine_vae_roundtrip(model: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Encode and decode an RGB image with the checkpoint's VAE, through the engine's own functions."""
    import torch
    from PIL import Image

    from webui.engine.engine import Engine
    from webui.engine.processing import decode_latents, encode_images

    sd = Engine(device="cpu").load_checkpoint(model)

    def roundtrip(img: np.ndarray) -> np.ndarray:
        lat = encode_images(sd, [Image.fromarray(img)], torch.device("cpu"))
        out = decode_latents(sd, lat)[0].clamp(-1, 1)
        return ((out + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    return roundtrip


def ground_truth_generator(model: Path | None, scenes: list[Scene], size: int) -> Generator:
    """Rendered ground truth (model None) or its VAE round trip through the engine's encode/decode.

    Checks the classifiers (ground truth should read ~1.0) and measures the ceiling the VAE allows.
    """
    import random

    from shapes_dataset import render

    by_prompt = {caption(s): s for s in scenes}
    roundtrip = engine_vae_roundtrip(model) if model is not None else None

    def generate(prompt: str, seed: int) -> np.ndarray:
        img = render(by_prompt[prompt], size, random.Random(seed))  # jittered like the training data
        return roundtrip(img) if roundtrip else img

    return generate


def confusion(rows: list[dict], scenes: list[Scene], attribute: str) -> dict[str, dict[str, int]]:
    """Counts of (expected -> read) for one attribute, for spotting systematic drifts (red read as orange)."""
    out: dict[str, dict[str, int]] = {}
    for row, scene in zip(rows, scenes):
        want = getattr(scene, attribute)
        got = str(row["read"][attribute])
        out.setdefault(want, {}).setdefault(got, 0)
        out[want][got] += 1
    return out


# ---------------------------------------------------------------- driver

def grid(images: list[np.ndarray], cols: int = 8, scale: int = 2) -> np.ndarray:
    h, w, _ = images[0].shape
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def evaluate(generate: Generator, scenes: list[Scene], base_seed: int) -> tuple[list[dict], list[np.ndarray]]:
    rows, images = [], []
    for i, scene in enumerate(scenes):
        prompt = caption(scene)
        img = generate(prompt, base_seed + i)
        r = read_image(img)
        rows.append({"prompt": prompt, "seed": base_seed + i, "read": r.__dict__, "ok": score(scene, r)})
        images.append(img)
    return rows, images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/Stable-diffusion/demo-shapes-v1.safetensors"))
    ap.add_argument("--private-loop", action="store_true", help="use the development sampler, not the engine")
    ap.add_argument("--ground-truth", action="store_true", help="read rendered scenes instead of generating")
    ap.add_argument("--vae-roundtrip", action="store_true",
                    help="read rendered scenes after an encode/decode with the model's VAE (the VAE's ceiling)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="Euler a", help="engine sampler name (the bar is measured with Euler a)")
    ap.add_argument("--img2img", type=float, metavar="STRENGTH",
                    help="img2img from each rendered scene at this strength: which steps lose an attribute")
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", type=Path, default=Path("docs/images/demo_grid.png"))
    ap.add_argument("--json", type=Path, default=Path("docs/images/demo_eval.json"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    scenes = eval_scenes(args.prompts)
    if args.ground_truth or args.vae_roundtrip:
        generate = ground_truth_generator(args.model if args.vae_roundtrip else None, scenes, args.size)
        kind = "vae-roundtrip" if args.vae_roundtrip else "ground-truth"
    else:
        if args.private_loop:
            if args.sampler != "Euler a" or args.img2img is not None:
                ap.error("--private-loop has only txt2img with Euler a")
            generate = private_generator(args.model, args.steps, args.cfg, args.size)
        else:
            init = ground_truth_generator(None, scenes, args.size) if args.img2img is not None else None
            generate = engine_generator(args.model, args.steps, args.cfg, args.size, args.sampler, init,
                                        args.img2img or 0.0)
        kind = "private-loop" if args.private_loop else "engine"
        if args.img2img is not None:
            kind += f" img2img {args.img2img}"
    t0 = time.time()
    rows, images = evaluate(generate, scenes, args.seed)
    seconds = time.time() - t0
    acc = accuracies([r["ok"] for r in rows])
    for a in ATTRIBUTES:
        print(f"{a:10s} {acc[a]:.3f}")
    print(f"{len(rows)} images in {seconds:.1f}s ({seconds / len(rows):.2f}s each)")
    wrong = {a: {k: v for k, v in confusion(rows, scenes, a).items() if set(v) != {k}}
             for a in ("colour", "background", "shape")}
    print("misread (expected -> read counts):", json.dumps(wrong))
    report = {"model": str(args.model), "generator": kind,
              "sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg, "size": args.size,
              "threads": args.threads, "prompts": len(rows), "seconds_per_image": seconds / len(rows),
              "accuracy": acc, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.grid), grid(images)[:, :, ::-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
