"""DPM-Solver++ samplers in k-diffusion's form: 2S a, 2M, SDE, 2M SDE (midpoint / Heun), 3M SDE.

They work in t = -log(sigma). Branches and noise queries use host floats (see common.py). The SDE ones default to a randomly seeded Brownian tree when no noise sampler is
given (as k-diffusion); the app passes `noise.brownian_noise_sampler(x, sigmas, seeds)`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .common import (ancestral_step, batch_sigma, cpu_copy, host_ancestral_downs, host_scalars, host_sigmas,
                     noise_or_default, report, to_d)
from .noise import brownian_noise_sampler


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                              s_noise=1.0) -> Tensor:
    """DPM-Solver++(2S) single-step second order to sigma_down, then fresh noise."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    downs = host_ancestral_downs(host, sigmas, eta)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if downs[i] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, batch_sigma(x, _sigma(s)), **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if host[i + 1] > 0:
            x = x + noise(host[i], host[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None) -> Tensor:
    """DPM-Solver++(2M): second-order multistep on the denoised predictions; first and last steps first order."""
    extra_args = extra_args or {}
    old_denoised = None
    host = host_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is not None and host[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            denoised_d = denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _sde_noise(noise_sampler, x: Tensor, sigmas: Tensor):
    return noise_sampler if noise_sampler is not None else brownian_noise_sampler(x, sigmas)


def _sde_points(host: list[float], like: Tensor, r: float) -> list[tuple[float, float, float]]:
    """Per step of DPM++ SDE: sigma(t), sigma(s), sigma(t_next) as the step computes them, as host floats."""
    cpu = cpu_copy(host, like)
    points = []
    for i in range(len(cpu) - 1):
        t, t_next = _t(cpu[i]), _t(cpu[i + 1])
        points += [_sigma(t), _sigma(t + (t_next - t) * r), _sigma(t_next)]
    flat = host_scalars(points)
    return [tuple(flat[k:k + 3]) for k in range(0, len(flat), 3)]


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                     s_noise=1.0, r=1 / 2) -> Tensor:
    """DPM-Solver++ (stochastic): two evaluations per step, each substep ancestral."""
    extra_args = extra_args or {}
    noise = _sde_noise(noise_sampler, x, sigmas)
    host = host_sigmas(sigmas)
    points = _sde_points(host, sigmas, r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        sigma_t, sigma_s, sigma_next = points[i]
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        s = t + (t_next - t) * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(sigma_t, sigma_s) * s_noise * su
        denoised_2 = model(x_2, batch_sigma(x, _sigma(s)), **extra_args)
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(sigma_t, sigma_next) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                        s_noise=1.0, solver_type="midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE; `solver_type` "midpoint" (DPM++ 2M SDE) or "heun" (DPM++ 2M SDE Heun)."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = extra_args or {}
    noise = _sde_noise(noise_sampler, x, sigmas)
    old_denoised, h_last = None, None
    host = host_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            phi = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                # multiplication order as in k-diffusion, so seeded results match bit for bit
                fresh = noise(host[i], host[i + 1])
                x = x + fresh * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                        s_noise=1.0) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep once two previous predictions exist."""
    extra_args = extra_args or {}
    noise = _sde_noise(noise_sampler, x, sigmas)
    denoised_1 = denoised_2 = h_1 = h_2 = h = None
    host = host_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                fresh = noise(host[i], host[i + 1])
                x = x + fresh * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
