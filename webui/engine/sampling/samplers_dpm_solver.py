"""DPM fast and DPM adaptive: the original DPM-Solver (Lu et al. 2022) on eps, as in k-diffusion.

k-diffusion gives these (sigma_min, sigma_max, n) instead of a schedule. Here they take `sigmas` like every
sampler and read sigma_max = sigmas[0], sigma_min = the smallest positive sigma and n = len(sigmas) - 1, which
is what A1111 passes for img2img and, with the Uniform or Karras schedule, for txt2img too.
A1111 passes eta = 1 (its "eta_ancestral" default) to both, so that is the default here.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import ancestral_step, batch_sigma, noise_or_default


class _PIDStepSizeController:
    """PID controller for the adaptive step size (in t = -log sigma)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class _DPMSolver:
    """DPM-Solver-1/2/3 steps with an eps cache per step."""

    def __init__(self, model, extra_args: dict):
        self.model = model
        self.extra_args = extra_args

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.model(x, batch_sigma(x, sigma), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps))

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps))

    def ancestral_target(self, t: Tensor, t_next: Tensor, t_end: Tensor, eta: float):
        """(t to step to, noise to add after) for an eta-ancestral step, capped at t_end."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sd))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    sigma_min, sigma_max = float(sigmas[sigmas > 0].min()), float(sigmas[0])
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    return _DPMSolver.t(torch.tensor(sigma_max)), _DPMSolver.t(torch.tensor(sigma_min))


def _fast_orders(nfe: int) -> list[int]:
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                    s_noise=1.0) -> Tensor:
    """DPM-Solver-Fast: len(sigmas) - 1 evaluations on uniform t steps of order 3, 3, ..., then 2/1."""
    solver = _DPMSolver(model, extra_args or {})
    noise = noise_or_default(noise_sampler, x)
    t_start, t_end = _range(sigmas)
    orders = _fast_orders(len(sigmas) - 1)
    ts = torch.linspace(float(t_start), float(t_end), len(orders) + 1, device=x.device)
    steps = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_target, su = solver.ancestral_target(t, t_next, t_end.to(x.device), eta)
        eps = solver.eps(cache, "eps", x, t)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": solver.sigma(t), "sigma_hat": solver.sigma(t),
                      "denoised": x - solver.sigma(t) * eps})
        x = steps[order](x, t, t_target, cache)
        x = x + su * s_noise * noise(solver.sigma(t), solver.sigma(t_next))
    return x


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                        accept_safety=0.81, eta=1.0, s_noise=1.0) -> Tensor:
    """DPM-Solver-12/23 with PID step-size control between sigmas[0] and the smallest positive sigma."""
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    solver = _DPMSolver(model, extra_args or {})
    noise = noise_or_default(noise_sampler, x)
    t_start, t_end = (t.to(x.device) for t in _range(sigmas))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, x_prev, step = t_start, x, 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        t_target, su = solver.ancestral_target(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_target, cache)
            x_high = solver.step_2(x, s, t_target, cache)
        else:
            x_low = solver.step_2(x, s, t_target, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_target, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise(solver.sigma(s), solver.sigma(t))
            s = t
        if callback is not None:
            callback({"x": x, "i": step, "sigma": solver.sigma(s), "sigma_hat": solver.sigma(s),
                      "denoised": denoised})
        step += 1
    return x
