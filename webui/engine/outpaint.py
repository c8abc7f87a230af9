"""Outpainting: a bigger canvas around the image, a mask over the new area, then an ordinary inpaint.

The new area starts as the image's edge pixels stretched outwards ("original"), or is refilled as the
masked-content mode says. Canvas sides are multiples of 8 (the latent grid): any rounding goes to the
expanded sides, so the original pixels keep their place and, at mask blur 0, their values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from . import inpaint
from .errors import InvalidParameterError
from .params import GenerationParams

DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Expansion:
    left: int
    right: int
    up: int
    down: int


def expansion(size: tuple[int, int], pixels: int, directions: list[str] | tuple[str, ...]) -> Expansion:
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise InvalidParameterError("directions", f"unknown {sorted(unknown)}; use {', '.join(DIRECTIONS)}")
    if not directions:
        raise InvalidParameterError("directions", "pick at least one side to extend")
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels <= 0:
        raise InvalidParameterError("pixels", f"must be a whole number above 0 (got {pixels!r})")
    amount = {d: pixels if d in directions else 0 for d in DIRECTIONS}
    w, h = size
    _round_up(amount, w, ("right", "left"), directions)
    _round_up(amount, h, ("down", "up"), directions)
    return Expansion(**amount)


def _round_up(amount: dict[str, int], side: int, pair: tuple[str, str], directions) -> None:
    """Add the pixels that make side + expansion a multiple of 8 to a chosen side of the pair (else the first)."""
    extra = -(side + amount[pair[0]] + amount[pair[1]]) % 8
    target = next((d for d in pair if d in directions), pair[0])
    amount[target] += extra


def extend_canvas(image: Image.Image, e: Expansion) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image with its edges stretched outwards, and white over the new area."""
    rgb = np.asarray(image.convert("RGB"))
    canvas = cv2.copyMakeBorder(rgb, e.up, e.down, e.left, e.right, cv2.BORDER_REPLICATE)
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[e.up:e.up + rgb.shape[0], e.left:e.left + rgb.shape[1]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


def outpaint_params(base: GenerationParams, image: Image.Image, pixels: int, directions, mask_blur: int,
                    fill: int = inpaint.FILL) -> GenerationParams:
    """img2img parameters that inpaint the new border of `image` with `base`'s prompt and sampler settings."""
    e = expansion(image.size, pixels, directions)
    canvas, mask = extend_canvas(image, e)
    return dataclasses.replace(
        base, init_images=[canvas], mask=mask, width=canvas.width, height=canvas.height, resize_mode=0,
        mask_blur_x=mask_blur, mask_blur_y=mask_blur, inpainting_fill=fill, inpaint_full_res=False,
        inpainting_mask_invert=False, extra_generation_params=dict(base.extra_generation_params))
