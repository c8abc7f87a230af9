"""Cheap live previews: a per-VAE linear map from latent channels to RGB, so a preview costs no decode.

Fixed coefficient tables only fit the VAE they were measured on. Instead the map is fitted once per VAE,
by least squares, from the latents of a few colour patterns encoded through that VAE.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PATTERN_SIZE = 64


def _patterns(n: int = 6, seed: int = 0) -> np.ndarray:
    """Blocky random colour images: flat regions like the ones a latent channel mixes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, PATTERN_SIZE // 4, axis=1), PATTERN_SIZE // 4, axis=2)


@torch.no_grad()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """A [C+1, 3] matrix W with rgb ≈ [latent, 1] @ W (rgb in [-1, 1], latent unscaled by scaling_factor)."""
    images = torch.from_numpy(_patterns()).float().permute(0, 3, 1, 2) / 127.5 - 1
    param = next(vae.parameters())
    latents = vae.encode(images.to(param.device, param.dtype)).latent_dist.mean.float().cpu()
    latents = latents * vae.config.scaling_factor
    h, w = latents.shape[-2:]
    target = torch.nn.functional.interpolate(images, size=(h, w), mode="area")
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(x, y).solution


def preview_image(latent: torch.Tensor, coefs: torch.Tensor, index: int = 0, upscale: int = 1) -> Image.Image:
    """One image of a latent batch, mapped linearly to RGB."""
    z = latent[index].float().cpu()
    rgb = torch.einsum("chw,ck->hwk", z, coefs[:-1]) + coefs[-1]
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(arr)
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST)
    return image
