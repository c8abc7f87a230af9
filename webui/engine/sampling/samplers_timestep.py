"""A1111's "timestep samplers" (DDIM, PLMS, UniPC from `sd_samplers_timesteps_impl.py`), rewritten in k-space.

A1111 runs these in VP space (x_vp = sqrt(abar) * x0 + sqrt(1 - abar) * eps) on uniform integer timesteps and
ignores the Schedule type. With x_k = x_vp / sqrt(abar) and sigma = sqrt((1 - abar) / abar) the same updates
become plain k-diffusion steps against the same denoiser: DDIM is Euler (eta 0) or Euler-ancestral (eta > 0),
PLMS is Adams-Bashforth on eps, UniPC is the bh1/bh2 predictor-corrector in lambda = -log sigma.

Conventions that keep results identical to A1111:
- The sigmas come from `timestep_sigmas` (DDIM, PLMS) or `unipc_sigmas` (UniPC), each ending in a 0.
  The final 0 is only a terminator: A1111 stops at the last timestep (t = 1 for DDIM/PLMS, t = 0 for UniPC)
  without a last model call, so these samplers stop at the last positive sigma too.
- A1111 returns the VP latent there, so the result is x_k / sqrt(1 + sigma_last^2).
- A1111 starts txt2img from unit noise taken as the VP latent, i.e. x_k = noise * sqrt(1 + sigma_0^2);
  `registry.initial_noise_scale` gives that factor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .common import ancestral_step, batch_sigma, host_sigmas, noise_or_default, report
from .discrete import DiscreteSchedule


def a1111_timesteps(steps: int, discard_next_to_last_sigma: bool = False, num_train: int = 1000) -> Tensor:
    """A1111's `get_timesteps`: 1, 1+k, 1+2k, ... with k = 1000 // steps (len may exceed steps)."""
    steps += 1 if discard_next_to_last_sigma else 0
    stride = max(num_train // steps, 1)
    return torch.clip(torch.arange(0, num_train, stride) + 1, 0, num_train - 1)


def timestep_sigmas(schedule: DiscreteSchedule, steps: int, discard_next_to_last_sigma: bool = False) -> Tensor:
    """Sigmas of A1111's DDIM/PLMS timesteps, descending, plus the 0 terminator."""
    t = a1111_timesteps(steps, discard_next_to_last_sigma, len(schedule.sigmas))
    return torch.cat([schedule.sigmas[t].flip(0), schedule.sigmas.new_zeros([1])])


def unipc_sigmas(schedule: DiscreteSchedule, steps: int, discard_next_to_last_sigma: bool = False) -> Tensor:
    """Sigmas at UniPC's "time_uniform" points, plus the 0 terminator.

    A1111 runs len(a1111_timesteps(steps)) UniPC steps on continuous t from 1 to 1/N with log(alpha)
    interpolated linearly between training timesteps, i.e. model time tau = 1000 * t - 1 from 999 to 0.
    """
    n_train = len(schedule.alphas_cumprod)
    n_steps = len(a1111_timesteps(steps, discard_next_to_last_sigma, n_train))
    t = torch.linspace(1.0, 1.0 / n_train, n_steps + 1)
    tau = ((t - 1.0 / n_train) * n_train).clamp(0, n_train - 1)
    log_alpha = 0.5 * schedule.alphas_cumprod.log()
    low = tau.floor().long()
    high = (low + 1).clamp(max=n_train - 1)
    la = torch.lerp(log_alpha[low], log_alpha[high], tau - low)
    lam = la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))
    return torch.cat([torch.exp(-lam), lam.new_zeros([1])])


def _strip_terminator(sigmas: Tensor) -> Tensor:
    return sigmas[:-1] if len(sigmas) > 1 and sigmas[-1] == 0 else sigmas


def _to_vp(x: Tensor, sigma: Tensor) -> Tensor:
    return x / (1 + sigma ** 2) ** 0.5


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=0.0) -> Tensor:
    """DDIM. eta 0: Euler between table sigmas; eta > 0: the DDIM sigma_t is k-diffusion's ancestral sigma_up."""
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    sig = _strip_terminator(sigmas)
    host = host_sigmas(sig) if eta else []
    for i in range(len(sig) - 1):
        denoised = model(x, batch_sigma(x, sig[i]), **extra_args)
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        x = denoised + (x - denoised) / sig[i] * sigma_down
        if eta:
            x = x + noise(host[i], host[i + 1]) * sigma_up
        report(callback, x, i, sig[i], sig[i], denoised)
    return _to_vp(x, sig[-1])


def _plms_eps(eps: Tensor, old: list[Tensor]) -> Tensor:
    """Adams-Bashforth combination of the current and up to three earlier eps predictions."""
    if len(old) == 1:
        return (3 * eps - old[-1]) / 2
    if len(old) == 2:
        return (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None) -> Tensor:
    """PLMS: a Heun ("pseudo improved Euler") first step, then 2nd/3rd/4th-order Adams-Bashforth on eps."""
    extra_args = extra_args or {}
    sig = _strip_terminator(sigmas)
    old_eps: list[Tensor] = []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        eps = (x - model(x, batch_sigma(x, sigma), **extra_args)) / sigma
        if old_eps:
            eps_prime = _plms_eps(eps, old_eps)
        else:
            x_2 = x + (sigma_next - sigma) * eps
            eps_2 = (x_2 - model(x_2, batch_sigma(x, sigma_next), **extra_args)) / sigma_next
            eps_prime = (eps + eps_2) / 2
        pred_x0 = x - sigma * eps_prime
        x = x + (sigma_next - sigma) * eps_prime
        old_eps = (old_eps + [eps])[-3:]
        report(callback, x, i, sigma, sigma, pred_x0)
    return _to_vp(x, sig[-1])


def _unipc_coeffs(rks: Tensor, hh: Tensor, order: int, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """(R, b, B_h) of the UniPC B(h) linear system."""
    h_phi_k = torch.expm1(hh) / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b), b_h


def _half(x: Tensor) -> Tensor:
    return torch.full((1,), 0.5, device=x.device)   # a fill, not a host-to-device copy


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """linalg.solve without its singularity check, which reads a flag back from the device every call."""
    return torch.linalg.solve_ex(a, b).result


def _unipc_update(model, x, models, lambdas, sigma_prev, sigma_t, order, use_corrector, variant, extra_args):
    """One multistep UniPC-B(h) step (data prediction) from lambdas[-1] to -log(sigma_t)."""
    lam_t = -torch.log(sigma_t)
    h = lam_t - lambdas[-1]
    m0 = models[-1]
    rks = [((lambdas[-(i + 1)] - lambdas[-1]) / h) for i in range(1, order)]
    d1s = [(models[-(i + 1)] - m0) / rk for i, rk in enumerate(rks, start=1)]
    rks_t = torch.stack(rks + [torch.ones_like(h)]).to(x.device)
    R, b, b_h = _unipc_coeffs(rks_t, -h, order, variant)
    x_base = (sigma_t / sigma_prev) * x - torch.expm1(-h) * m0
    x_t = x_base
    if d1s:
        rhos_p = _half(x) if order == 2 else _solve(R[:-1, :-1], b[:-1])
        x_t = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s))
    if not use_corrector:
        return x_t, None
    rhos_c = _half(x) if order == 1 else _solve(R, b)
    model_t = model(x_t, batch_sigma(x, sigma_t), **extra_args)
    corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return x_base - b_h * (corr + rhos_c[-1] * (model_t - m0)), model_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=3,
                 variant="bh1", lower_order_final=True) -> Tensor:
    """UniPC multistep (A1111 defaults: bh1, order 3, lower order at the end, no corrector on the last step)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError("variant must be 'bh1' or 'bh2'")
    extra_args = extra_args or {}
    sig = _strip_terminator(sigmas)
    steps = len(sig) - 1
    order = max(1, min(order, steps))
    models = [model(x, batch_sigma(x, sig[0]), **extra_args)]
    lambdas = [-torch.log(sig[0])]
    for step in range(1, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final and step >= order else min(step, order)
        last = step == steps
        x, model_x = _unipc_update(model, x, models, lambdas, sig[step - 1], sig[step], step_order,
                                   not last, variant, extra_args)
        report(callback, x, step - 1, sig[step - 1], sig[step - 1], models[-1] if model_x is None else model_x)
        models = (models + [model_x])[-order:]
        lambdas = (lambdas + [-torch.log(sig[step])])[-order:]
    return _to_vp(x, sig[-1])
