"""Seeds and initial noise, A1111-style.

Noise is drawn on the CPU from one generator per image, seeded with that image's seed, so image i of a
batch with seed s is identical to a single image with seed s+i, on any device. The same generators keep
supplying the per-step noise of ancestral samplers.
"""
from __future__ import annotations

import random

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int | None, rand: random.Random | None = None) -> int:
    """-1 (or None) means a fresh random seed."""
    if seed is None or int(seed) == -1:
        return (rand or random.SystemRandom()).randrange(0, MAX_SEED)
    return int(seed)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation for variation seeds, normalised along dim 1 as A1111 does."""
    low_n = low / torch.norm(low, dim=1, keepdim=True)
    high_n = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def _paste_centered(target: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copy the overlapping centre of `src` into `target` (both [C, H, W]); for 'resize seed from'."""
    dy, dx = (target.shape[1] - src.shape[1]) // 2, (target.shape[2] - src.shape[2]) // 2
    h = src.shape[1] if dy >= 0 else src.shape[1] + 2 * dy
    w = src.shape[2] if dx >= 0 else src.shape[2] + 2 * dx
    ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    target[:, ty:ty + h, tx:tx + w] = src[:, sy:sy + h, sx:sx + w]
    return target


class ImageRNG:
    """Per-image noise source for one batch. `first()` is the initial noise; `next()` each later draw."""

    def __init__(self, shape: tuple[int, int, int], seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 latent_scale: int = 8):
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.subseeds = list(subseeds) if subseeds else None
        self.subseed_strength = float(subseed_strength)
        self.resize_from = seed_resize_from if seed_resize_from and min(seed_resize_from) > 0 else None
        self.latent_scale = latent_scale
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def _noise_shape(self) -> tuple[int, int, int]:
        if self.resize_from is None:
            return self.shape
        w, h = self.resize_from
        return (self.shape[0], h // self.latent_scale, w // self.latent_scale)

    def _first_for(self, i: int) -> torch.Tensor:
        shape, gen = self._noise_shape(), self.generators[i]
        resized = shape != self.shape
        noise = _randn(self.seeds[i], shape) if resized else torch.randn(shape, generator=gen)
        if self.subseeds is not None and self.subseed_strength != 0:
            sub = _randn(self.subseeds[i] if i < len(self.subseeds) else 0, shape)
            noise = slerp(self.subseed_strength, noise, sub)
        if resized:
            noise = _paste_centered(torch.randn(self.shape, generator=gen), noise)
        return noise

    def first(self) -> torch.Tensor:
        return torch.stack([self._first_for(i) for i in range(len(self.seeds))])

    def next(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def noise_sampler(self, device: torch.device, dtype: torch.dtype):
        """A sampler-contract noise source: (sigma, sigma_next) -> unit noise shaped like the batch latent."""
        return lambda sigma, sigma_next: self.next().to(device, dtype)
