"""Sigma schedules ("Schedule type"), numerically as in A1111 v1.10.1 `sd_schedulers.py` and k-diffusion.

Every function has the shape `f(n, sigma_min, sigma_max, schedule, **opts) -> Tensor` and returns n+1
descending float32 sigmas on the CPU, the last one 0 (the one exception, as in A1111: KL Optimal ends at
sigma_min). Which inputs each one uses:

- uses only `schedule` (the model's table): Uniform, Simple, DDIM.
- uses sigma_min/sigma_max and `schedule.sigma_to_t/t_to_sigma`: Normal, SGM Uniform.
- uses only sigma_min/sigma_max: Karras, Exponential, Polyexponential, KL Optimal, Beta.
- uses neither (fixed NVIDIA tables): Align Your Steps (`opts["is_sdxl"]` picks the SDXL table).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from .discrete import DiscreteSchedule

AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _with_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _from_floats(values) -> Tensor:
    return torch.tensor([float(v) for v in values] + [0.0], dtype=torch.float32)


def uniform(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, **opts) -> Tensor:
    """The model's `get_sigmas(n)`: linear in t from t_max to 0. Ignores sigma_min/sigma_max."""
    return schedule.get_sigmas(n)


def karras(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule | None = None,
           rho: float = 7.0, **opts) -> Tensor:
    """Karras et al. (2022): linear in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule | None = None,
                **opts) -> Tensor:
    """Linear in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule | None = None,
                    rho: float = 1.0, **opts) -> Tensor:
    """log sigma follows ramp^rho; rho=1 is Exponential."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return _with_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def _t_range(schedule: DiscreteSchedule, sigma_min: float, sigma_max: float) -> tuple[Tensor, Tensor]:
    return schedule.sigma_to_t(torch.tensor(sigma_max)), schedule.sigma_to_t(torch.tensor(sigma_min))


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, **opts) -> Tensor:
    """n+1 points linear in t between sigma_max and sigma_min, the last one dropped for the 0."""
    start, end = _t_range(schedule, sigma_min, sigma_max)
    return _from_floats(schedule.t_to_sigma(t) for t in torch.linspace(float(start), float(end), n + 1)[:-1])


def normal(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, **opts) -> Tensor:
    """n points linear in t from sigma_max's t to sigma_min's t."""
    start, end = _t_range(schedule, sigma_min, sigma_max)
    return _from_floats(schedule.t_to_sigma(t) for t in torch.linspace(float(start), float(end), n))


def simple(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, **opts) -> Tensor:
    """Every len/n-th table sigma from the top (ComfyUI's "simple")."""
    stride = len(schedule.sigmas) / n
    return _from_floats(schedule.sigmas[-(1 + int(i * stride))] for i in range(n))


def ddim(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, **opts) -> Tensor:
    """Table sigmas at t = 1, 1+k, 1+2k, ... (k = len // n), descending. Gives more than n steps when
    n does not divide 1000, as A1111 does."""
    stride = max(len(schedule.sigmas) // n, 1)
    picked = [schedule.sigmas[i] for i in range(1, len(schedule.sigmas), stride)]
    return _from_floats(reversed(picked))


def kl_optimal(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule | None = None,
               **opts) -> Tensor:
    """tan of a linear ramp in arctan(sigma). As in A1111 this has n+1 values ending at sigma_min, not 0."""
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    steps = torch.arange(n + 1)
    return torch.tan(steps / n * alpha_min + (1.0 - steps / n) * alpha_max)


def _loglinear_interp(values: tuple[float, ...], num: int) -> np.ndarray:
    xs = np.linspace(0, 1, len(values))
    ys = np.log(np.asarray(values)[::-1])
    new_ys = np.interp(np.linspace(0, 1, num), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps(n: int, sigma_min: float = 0.0, sigma_max: float = 0.0,
                     schedule: DiscreteSchedule | None = None, is_sdxl: bool = False, **opts) -> Tensor:
    """NVIDIA's 11-value AYS tables, log-linearly resampled to n values when n != 11. Ignores sigma range."""
    table = AYS_SDXL if is_sdxl else AYS_SD15
    values = table if n == len(table) else _loglinear_interp(table, n)
    return _from_floats(values)


def beta(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule | None = None,
         dist_alpha: float = 0.6, dist_beta: float = 0.6, **opts) -> Tensor:
    """Beta-distribution quantiles mapped linearly onto [sigma_min, sigma_max] (A1111 v1.10.1's formula;
    `dist_alpha`/`dist_beta` are the settings "beta_dist_alpha"/"beta_dist_beta")."""
    quantiles = [stats.beta.ppf(x, dist_alpha, dist_beta) for x in 1 - np.linspace(0, 1, n)]
    return _from_floats(sigma_min + q * (sigma_max - sigma_min) for q in quantiles)


def discard_next_to_last_sigma(sigmas: Tensor) -> Tensor:
    """Drop the penultimate sigma (A1111 asks the schedule for n+1 steps first, then drops it)."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])
