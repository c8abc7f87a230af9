"""Small pieces every sampler shares: the ODE derivative, ancestral step sizes, the noise fallback, callbacks."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
StepCallback = Optional[Callable[[dict], Any]]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative dx/dsigma = (x - D(x)) / sigma."""
    if isinstance(sigma, Tensor):
        sigma = append_dims(sigma.to(x.device), x.ndim)
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): deterministic target and fresh-noise amount of an ancestral step."""
    if not eta:
        return sigma_to, torch.zeros_like(torch.as_tensor(sigma_to))
    up = eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5
    sigma_up = torch.minimum(torch.as_tensor(sigma_to), torch.as_tensor(up))
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def noise_or_default(noise_sampler: NoiseSampler | None, x: Tensor) -> NoiseSampler:
    """The caller's noise source, or unseeded torch.randn_like when none was given."""
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: torch.randn_like(x)


def batch_sigma(x: Tensor, sigma: Tensor | float) -> Tensor:
    """A sigma repeated over the batch, as the denoiser contract wants it."""
    return x.new_ones([x.shape[0]]) * sigma


def report(callback: StepCallback, x: Tensor, i: int, sigma, sigma_hat, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
