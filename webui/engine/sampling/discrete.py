"""The discrete model schedule: the map between a model's 1000 training timesteps and noise levels (sigmas).

Numbers follow k-diffusion's `DiscreteSchedule` as A1111 uses it: `alphas_cumprod` is computed in float64 and
stored as float32 (LDM's `register_schedule`), and sigmas, log-sigmas and every interpolation are float32.

The table lives on the CPU; `sigma_to_t` / `t_to_sigma` on a tensor compute on that tensor's device, with a
copy of the log-sigma table kept per device, so the denoiser's per-step lookup never reads back from a GPU.
"""
from __future__ import annotations

import torch
from torch import Tensor


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 steps: int = 1000) -> Tensor:
    """SD's `scaled_linear` betas (linear in sqrt(beta)), cumulated in float64, returned as float32."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiscreteSchedule:
    """Sigmas (ascending) of a discrete-time eps/v model, with k-diffusion's log-sigma interpolation."""

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float32).cpu()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self._log_sigmas_on: dict[torch.device, Tensor] = {self.log_sigmas.device: self.log_sigmas}

    @classmethod
    def for_sd(cls) -> "DiscreteSchedule":
        """SD1/SD2/SDXL: scaled_linear betas 0.00085 -> 0.012 over 1000 steps."""
        return cls(scaled_linear_alphas_cumprod())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __len__(self) -> int:
        return len(self.sigmas)

    def table(self, device: torch.device) -> Tensor:
        """The log-sigma table on `device` (copied there once)."""
        if device not in self._log_sigmas_on:
            self._log_sigmas_on[device] = self.log_sigmas.to(device)
        return self._log_sigmas_on[device]

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor | float:
        """Fractional timestep of a sigma; a tensor gives a tensor of the same shape on its device, a number a
        float."""
        as_float = not isinstance(sigma, Tensor)
        s = torch.as_tensor(sigma, dtype=torch.float32)
        t = self._sigma_to_t(s).view(s.shape)
        return float(t) if as_float else t

    def _sigma_to_t(self, sigma: Tensor) -> Tensor:
        log_sigmas = self.table(sigma.device)
        log_sigma = sigma.reshape(-1).log()
        dists = log_sigma - log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(log_sigmas) - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return (1 - w) * low_idx + w * high_idx

    def t_to_sigma(self, t: Tensor | float) -> Tensor | float:
        """Sigma at a fractional timestep (log-sigma linear interpolation between table entries)."""
        as_float = not isinstance(t, Tensor)
        sigma = self._t_to_sigma(torch.as_tensor(t).float())
        return float(sigma) if as_float else sigma

    def _t_to_sigma(self, t: Tensor) -> Tensor:
        log_sigmas = self.table(t.device)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int) -> Tensor:
        """The model's own schedule ("Uniform"): n sigmas linear in t from t_max to 0, then a 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self._t_to_sigma(t), t.new_zeros([1])])

    def lcm_view(self, original_steps: int = 50) -> "LCMDiscreteSchedule":
        """The coarse 50-entry schedule A1111's LCM sampler runs on (`LCMCompVisDenoiser`)."""
        return LCMDiscreteSchedule(self.alphas_cumprod, original_steps)


class LCMDiscreteSchedule(DiscreteSchedule):
    """LCM's schedule: every `skip`-th timestep (19, 39, ..., 999) and quantized timesteps, as A1111 does it.

    `sigma_to_t` returns the nearest of those real timesteps, which is also what the LCM denoiser feeds the UNet.
    """

    def __init__(self, alphas_cumprod: Tensor, original_steps: int = 50):
        full = alphas_cumprod.detach().to(torch.float32).cpu()
        self.skip_steps = len(full) // original_steps
        idx = torch.arange(original_steps) * self.skip_steps + (self.skip_steps - 1)
        super().__init__(full[idx])
        self.full_alphas_cumprod = full

    def _sigma_to_t(self, sigma: Tensor) -> Tensor:
        dists = sigma.reshape(-1).log() - self.table(sigma.device)[:, None]
        return dists.abs().argmin(dim=0) * self.skip_steps + (self.skip_steps - 1)

    def _t_to_sigma(self, t: Tensor) -> Tensor:
        idx = ((t - (self.skip_steps - 1)) / self.skip_steps).float().clamp(0, len(self.sigmas) - 1)
        return super()._t_to_sigma(idx)

    def get_sigmas(self, n: int) -> Tensor:
        start = self._sigma_to_t(self.sigmas[-1:])[0]
        end = self._sigma_to_t(self.sigmas[:1])[0]
        t = torch.linspace(float(start), float(end), n)
        return torch.cat([self._t_to_sigma(t), t.new_zeros([1])])
