"""Upscalers for the hires fix: latent interpolation modes and plain pixel resamplers.

Names follow A1111 (`shared.latent_upscale_modes` and the built-in "None"/"Lanczos"/"Nearest" upscalers), so
infotexts and API requests from A1111 name the same thing here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class LatentMode:
    mode: str
    antialias: bool


LATENT_MODES: dict[str, LatentMode] = {
    "Latent": LatentMode("bilinear", False),
    "Latent (antialiased)": LatentMode("bilinear", True),
    "Latent (bicubic)": LatentMode("bicubic", False),
    "Latent (bicubic antialiased)": LatentMode("bicubic", True),
    "Latent (nearest)": LatentMode("nearest", False),
    "Latent (nearest-exact)": LatentMode("nearest-exact", False),
}
# "None" resizes with Lanczos too: A1111's UpscalerNone leaves the final resize to the default resampler.
PIXEL_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
DEFAULT = "Latent"


def names() -> list[str]:
    return list(LATENT_MODES) + list(PIXEL_UPSCALERS)


def canonical(name: str | None) -> str | None:
    """The registered spelling of `name` (case-insensitive), or None if unknown. Empty means the default."""
    if not name:
        return DEFAULT
    by_lower = {n.lower(): n for n in names()}
    return by_lower.get(str(name).strip().lower())


def is_latent(name: str) -> bool:
    return name in LATENT_MODES


def upscale_latent(latent: torch.Tensor, name: str, height: int, width: int) -> torch.Tensor:
    """Interpolate a [B, C, h, w] latent to [B, C, height, width] with the named latent mode."""
    m = LATENT_MODES[name]
    align = False if m.mode in ("bilinear", "bicubic") else None
    return F.interpolate(latent, size=(height, width), mode=m.mode, antialias=m.antialias, align_corners=align)


def upscale_image(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    return image.resize((width, height), PIXEL_UPSCALERS[name])
