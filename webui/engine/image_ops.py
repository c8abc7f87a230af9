"""Pixel-space helpers: PIL ↔ tensors, and A1111's img2img resize modes."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LANCZOS = Image.Resampling.LANCZOS


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images → [B, 3, H, W] in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] → RGB images (rounded, as A1111 does)."""
    arr = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def _fit_size(src: tuple[int, int], dst: tuple[int, int], cover: bool) -> tuple[int, int]:
    """Size of `src` scaled to cover (or fit inside) `dst`, keeping its aspect ratio."""
    (sw, sh), (w, h) = src, dst
    wider_target = w / h > sw / sh
    if wider_target == cover:
        return w, max(1, sh * w // sw)
    return max(1, sw * h // sh), h


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """0: just resize; 1: crop and resize (cover, centre crop); 2: resize and fill (fit, stretch edges)."""
    image = image.convert("RGB")
    if mode == 0:
        return image.resize((width, height), LANCZOS)
    cover = mode == 1
    rw, rh = _fit_size(image.size, (width, height), cover)
    resized = image.resize((rw, rh), LANCZOS)
    canvas = Image.new("RGB", (width, height))
    left, top = width // 2 - rw // 2, height // 2 - rh // 2
    canvas.paste(resized, (left, top))
    if not cover:
        _stretch_edges(canvas, resized, left, top)
    return canvas


def _stretch_edges(canvas: Image.Image, resized: Image.Image, left: int, top: int) -> None:
    """Fill the bands left by 'resize and fill' by stretching the image's outermost row/column."""
    width, height = canvas.size
    rw, rh = resized.size
    if top > 0:
        canvas.paste(resized.crop((0, 0, rw, 1)).resize((width, top)), (0, 0))
        bottom = height - (top + rh)
        if bottom > 0:
            canvas.paste(resized.crop((0, rh - 1, rw, rh)).resize((width, bottom)), (0, top + rh))
    if left > 0:
        canvas.paste(resized.crop((0, 0, 1, rh)).resize((left, height)), (0, 0))
        right = width - (left + rw)
        if right > 0:
            canvas.paste(resized.crop((rw - 1, 0, rw, rh)).resize((right, height)), (left + rw, 0))
