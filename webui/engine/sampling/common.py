"""Small pieces every sampler shares: the ODE derivative, ancestral step sizes, the noise fallback, callbacks,
and the host copy of the schedule.

Host copy: a step rule that branches on a sigma (`if sigma_next > 0`) must not compare a device tensor,
which makes the host wait for the GPU at every step. Samplers read the schedule into Python floats once per
run (`host_sigmas`) and branch on those; the tensor math stays on the sigmas' own device. Values derived
from sigmas alone (ancestral sigma_down, SDE half-step sigmas) are computed once, up front, on a CPU copy
with the same float32 operations as the step math, so branches and noise queries see the same numbers.
Noise samplers are called with these host floats: `noise(sigma, sigma_next)`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

NoiseSampler = Callable[[float, float], Tensor]   # (sigma, sigma_next) host floats -> unit noise
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


def host_sigmas(sigmas: Tensor) -> list[float]:
    """The schedule as Python floats: one device read per sampler run."""
    return sigmas.detach().tolist()


def host_scalars(values: list[Tensor]) -> list[float]:
    """0-d CPU tensors as Python floats, in one read."""
    return torch.stack(values).tolist() if values else []


def cpu_copy(host: list[float], like: Tensor) -> Tensor:
    """The host floats back as a CPU tensor in the schedule's dtype (exact: the values came from it)."""
    return torch.tensor(host, dtype=like.dtype)


def host_ancestral_downs(host: list[float], like: Tensor, eta: float) -> list[float]:
    """sigma_down of every ancestral step i -> i + 1, with the very operations the step uses."""
    cpu = cpu_copy(host, like)
    downs = [torch.as_tensor(ancestral_step(cpu[i], cpu[i + 1], eta)[0]) for i in range(len(cpu) - 1)]
    return host_scalars(downs)


def as_dtype(value: float, like: Tensor) -> float:
    """`value` rounded to the schedule's dtype, as torch rounds a Python scalar compared with a tensor."""
    return torch.tensor(value, dtype=like.dtype).tolist()


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
