"""A1111's own k-diffusion-style samplers: Restart (`sd_samplers_extra.py`) and LCM (`sd_samplers_lcm.py`)."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import batch_sigma, cpu_copy, host_sigmas, noise_or_default, report, to_d
from .schedules import karras


Step = tuple[Tensor, Tensor, float, float]   # sigma_from, sigma_to on the sigmas' device, then as host floats


def _restart_steps(sigmas: Tensor, restart_list: dict | None) -> list[Step]:
    """The plan below, built on a CPU copy of the schedule, moved to the device and read back once each."""
    plan = _restart_plan(cpu_copy(host_sigmas(sigmas), sigmas), restart_list)
    if not plan:
        return []
    flat = torch.stack([sigma for pair in plan for sigma in pair])
    host, device = flat.tolist(), flat.to(sigmas.device)
    return [(device[k], device[k + 1], host[k], host[k + 1]) for k in range(0, len(host), 2)]


def _restart_plan(sigmas: Tensor, restart_list: dict | None) -> list[tuple[Tensor, Tensor]]:
    """The (sigma_from, sigma_to) pairs Restart walks, restart segments included.

    Without a restart_list and with >= 20 steps, A1111 rebuilds a shorter Karras schedule over the same range
    and restarts once from sigma ~0.1 back up to sigma ~2 with 9 steps (twice with steps//4 at >= 36 steps).
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            n = steps - restart_steps * restart_times
            sigmas = karras(n, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    at_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in at_index:
            continue
        restart_steps, restart_times, restart_max = at_index[i + 1]
        min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
        if max_idx < min_idx:
            segment = karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
            segment = segment.to(sigmas.device)
            plan.extend(list(zip(segment[:-1], segment[1:])) * restart_times)
    return plan


@torch.no_grad()
def sample_restart(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0,
                   restart_list: dict | None = None) -> Tensor:
    """Restart sampling (Xu et al. 2023): Heun steps, with jumps back up in noise filled by fresh noise.

    `restart_list` maps {min_sigma: [restart_steps, restart_times, max_sigma]}; None picks A1111's default.
    """
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    last_sigma = last_host = None
    for step, (old_sigma, new_sigma, old_host, new_host) in enumerate(_restart_steps(sigmas, restart_list)):
        if last_host is not None and last_host < old_host:
            x = x + noise(last_host, old_host) * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        x = _heun_step(model, x, old_sigma, new_sigma, new_host == 0, step, callback, extra_args)
        last_sigma, last_host = new_sigma, new_host
    return x


def _heun_step(model, x, old_sigma, new_sigma, to_zero: bool, step, callback, extra_args) -> Tensor:
    denoised = model(x, batch_sigma(x, old_sigma), **extra_args)
    d = to_d(x, old_sigma, denoised)
    report(callback, x, step, new_sigma, old_sigma, denoised)
    dt = new_sigma - old_sigma
    if to_zero:
        return x + d * dt
    x_2 = x + d * dt
    d_2 = to_d(x_2, new_sigma, model(x_2, batch_sigma(x, new_sigma), **extra_args))
    return x + (d + d_2) / 2 * dt


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None) -> Tensor:
    """Latent Consistency Model sampling: jump to the prediction, re-noise to the next sigma.

    Needs an LCM model (or LoRA) behind a denoiser that applies LCM's boundary scalings; A1111 also runs it on
    the coarse 50-step table (`DiscreteSchedule.lcm_view()`), which `registry.build_sigmas` takes care of.
    """
    extra_args = extra_args or {}
    noise = noise_or_default(noise_sampler, x)
    host = host_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if host[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(host[i], host[i + 1])
    return x
