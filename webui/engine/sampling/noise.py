"""Noise samplers: where every fresh noise draw of a sampler comes from.

Both kinds give image i of a batch exactly the draws a single-image run with seed i would get, which is how
A1111 keeps "batch of 4" and "seed + 3" identical:

- `per_image_noise_sampler`: one CPU `torch.Generator` per image, each a continuing stream (A1111's
  `ImageRNG.next()` with RNG source CPU). Pass the same generators that drew the initial noise, reseeded with
  seed + ENSD when "Eta noise seed delta" is set.
- `brownian_noise_sampler`: one `torchsde.BrownianTree` per image seed (k-diffusion's `BatchedBrownianTree`,
  as A1111's `create_noise_sampler` builds it for the SDE samplers).
"""
from __future__ import annotations

from typing import Sequence

import warnings

import torch
import torchsde
from torch import Tensor

from .common import NoiseSampler


def make_generators(seeds: Sequence[int], offset: int = 0) -> list[torch.Generator]:
    """CPU generators seeded seed + offset (offset = ENSD for the sampler's own draws)."""
    return [torch.Generator("cpu").manual_seed(int(seed) + offset) for seed in seeds]


def per_image_noise_sampler(generators: Sequence[torch.Generator], shape: Sequence[int],
                            device: torch.device | str, dtype: torch.dtype) -> NoiseSampler:
    """Unit noise of `shape` ([batch, ...]); row i is drawn from generators[i] on the CPU in float32."""
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    item_shape = tuple(shape[1:])

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        rows = [torch.randn(item_shape, generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    return sample


class _BatchedBrownianTree:
    """One Brownian tree per batch row (or one for the whole batch), queried on sorted intervals."""

    def __init__(self, x: Tensor, t0: Tensor, t1: Tensor, seeds: Sequence[int] | None):
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = sorted((t0, t1))
        if seeds is None:
            self.batched = False
            entropies = [int(torch.randint(0, 2 ** 63 - 1, []).item())]
            w0 = torch.zeros_like(x)
        else:
            self.batched = True
            entropies = [int(s) for s in seeds]
            w0 = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in entropies]

    def __call__(self, t0: float | Tensor, t1: float | Tensor) -> Tensor:
        sign = self.sign * (1 if t0 < t1 else -1)
        lo, hi = sorted((t0, t1))
        with warnings.catch_warnings():
            # float32 sigma range ends vs torchsde's own copies: harmless "Should have tb<=t1" noise
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return w if self.batched else w[0]


def brownian_noise_sampler(x: Tensor, sigmas: Tensor, seeds: Sequence[int] | None = None) -> NoiseSampler:
    """Brownian-tree noise over [smallest positive sigma, largest sigma]; one tree per seed when given.

    Returns unit-variance increments W(sigma_next) - W(sigma) / sqrt(|sigma_next - sigma|), so overlapping
    intervals (DPM++ SDE's half steps) see consistent noise. The samplers pass host floats (the tree works on
    the host anyway), so a query reads nothing back from the device; 0-d tensors are accepted too.
    """
    if seeds is not None and len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    tree = _BatchedBrownianTree(x, torch.as_tensor(sigma_min), torch.as_tensor(sigma_max), seeds)

    def sample(sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        scale = (t1 - t0).abs().sqrt()   # a CPU scalar for host floats; float32 as before
        if isinstance(sigma, Tensor) or isinstance(sigma_next, Tensor):
            return tree(t0, t1) / scale
        return tree(sigma, sigma_next) / scale

    return sample
