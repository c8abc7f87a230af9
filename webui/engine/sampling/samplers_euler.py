"""Euler-family samplers in k-diffusion's form: Euler, Euler a, Heun, DPM2, DPM2 a, LMS.

`s_churn/s_tmin/s_tmax/s_noise` (Karras et al. 2022, Algorithm 2) apply to Euler, Heun and DPM2. With
`s_churn > 0` a noise draw happens every step, used or not, as k-diffusion does, so seeded runs line up.
"""
from __future__ import annotations

import math

import torch
from scipy import integrate
from torch import Tensor

from .common import (ancestral_step, as_dtype, batch_sigma, cpu_copy, host_ancestral_downs, host_sigmas,
                     noise_or_default, report, to_d)


def _churn_plan(host: list[float], like: Tensor, s_churn: float, s_tmin: float,
                s_tmax: float) -> tuple[list[float], list[float]]:
    """Per step: gamma (the churn factor) and sigma_hat = sigma * (gamma + 1) as a host float."""
    low, high = as_dtype(s_tmin, like), as_dtype(s_tmax, like)
    gamma = min(s_churn / max(len(host) - 1, 1), 2 ** 0.5 - 1)
    gammas = [gamma if low <= sigma <= high else 0.0 for sigma in host[:-1]]
    if s_churn <= 0:
        return gammas, host[:-1]   # no noise draws: the host sigma_hat is never used
    factors = torch.tensor([g + 1 for g in gammas], dtype=like.dtype)
    return gammas, (cpu_copy(host[:-1], like) * factors).tolist()


def _churn(x: Tensor, sigma: Tensor, gamma: float, noise, s_churn: float, s_noise: float,
           host_pair: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Raise the noise level of x from sigma to sigma_hat; returns (x, sigma_hat)."""
    sigma_hat = sigma * (gamma + 1)
    if s_churn > 0:
        eps = noise(*host_pair) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_churn=0.0,
                 s_tmin=0.0, s_tmax=math.inf, s_noise=1.0) -> Tensor:
    """Euler steps on the probability-flow ODE, optionally with churn."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    gammas, hats = _churn_plan(host, sigmas, s_churn, s_tmin, s_tmax)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], gammas[i], noise, s_churn, s_noise, (host[i], hats[i]))
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                           s_noise=1.0) -> Tensor:
    """Euler step down to sigma_down, then fresh noise up to sigmas[i + 1]."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if host[i + 1] > 0:
            x = x + noise(host[i], host[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_churn=0.0,
                s_tmin=0.0, s_tmax=math.inf, s_noise=1.0) -> Tensor:
    """Heun's second-order method; the last step (to sigma 0) is Euler."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    gammas, hats = _churn_plan(host, sigmas, s_churn, s_tmin, s_tmax)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], gammas[i], noise, s_churn, s_noise, (host[i], hats[i]))
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if host[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, batch_sigma(x, sigmas[i + 1]), **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


def _dpm2_step(model, x, d, sigma, sigma_to, extra_args) -> Tensor:
    """DPM-Solver-2 midpoint step from sigma to sigma_to (midpoint geometric in sigma)."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, batch_sigma(x, sigma_mid), **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_churn=0.0,
                 s_tmin=0.0, s_tmax=math.inf, s_noise=1.0) -> Tensor:
    """DPM-Solver-2-inspired midpoint sampler (two evaluations per step, Euler to sigma 0)."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    gammas, hats = _churn_plan(host, sigmas, s_churn, s_tmin, s_tmax)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], gammas[i], noise, s_churn, s_noise, (host[i], hats[i]))
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if host[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _dpm2_step(model, x, d, sigma_hat, sigmas[i + 1], extra_args)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                           s_noise=1.0) -> Tensor:
    """DPM2 step to sigma_down, then fresh noise."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    downs = host_ancestral_downs(host, sigmas, eta)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if downs[i] == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm2_step(model, x, d, sigmas[i], sigma_down, extra_args)
            x = x + noise(host[i], host[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial j through t[i], t[i-1], ..."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=4) -> Tensor:
    """Linear multistep over the last `order` derivatives, coefficients integrated with scipy (as k-diffusion)."""
    extra_args = extra_args or {}
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x
