"""The UNet seen as a denoiser D(x, sigma), and classifier-free guidance on top of it.

Samplers only ever call `CFGDenoiser(x, sigma)`. The guidance formula is A1111's, written out here rather
than taken from a pipeline: denoised = uncond + scale · (cond − uncond). Scale 1 needs only the cond pass and
scale 0 only the uncond pass, and both shortcuts are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .conditioning import Conditioning


class UNetDenoiser:
    """Wraps an epsilon- or v-predicting UNet in k-diffusion scaling: x = x0 + sigma·noise."""

    def __init__(self, unet, schedule, prediction_type: str, dtype: torch.dtype):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 added_cond: dict | None = None, extra_channels: torch.Tensor | None = None) -> torch.Tensor:
        sigma_ = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_in = 1.0 / (sigma_ ** 2 + 1.0) ** 0.5
        x_in = x * c_in
        if extra_channels is not None:
            x_in = torch.cat([x_in, extra_channels.to(x_in)], dim=1)
        t = self.schedule.sigma_to_t(sigma.float()).to(x.device)
        out = self.unet(x_in.to(self.dtype), t, encoder_hidden_states=context.to(self.dtype),
                        added_cond_kwargs=_cast(added_cond, self.dtype)).sample.to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - out * sigma_
        c_skip = 1.0 / (sigma_ ** 2 + 1.0)
        c_out = -sigma_ / (sigma_ ** 2 + 1.0) ** 0.5
        return x * c_skip + out * c_out


def _cast(added: dict | None, dtype: torch.dtype) -> dict | None:
    return None if added is None else {k: v.to(dtype) for k, v in added.items()}


@dataclass
class DenoiserHooks:
    """Callbacks around each CFG step, for extensions (A1111's on_cfg_denoiser / denoised / after_cfg)."""
    before: list[Callable] = field(default_factory=list)      # (params: dict) -> None; may replace x/sigma/conds
    denoised: list[Callable] = field(default_factory=list)    # (params: dict) -> None; sees cond/uncond outputs
    after_cfg: list[Callable] = field(default_factory=list)   # (params: dict) -> None; may replace 'x'


class CFGDenoiser:
    """Batches cond and uncond through one UNet call and applies the guidance formula."""

    def __init__(self, inner: UNetDenoiser, cond: Conditioning, uncond: Conditioning, cfg_scale: float,
                 cond_added: dict | None = None, uncond_added: dict | None = None,
                 extra_channels: torch.Tensor | None = None, hooks: DenoiserHooks | None = None,
                 on_step: Callable[[], None] | None = None):
        self.inner = inner
        self.cond, self.uncond = cond, uncond
        self.cfg_scale = float(cfg_scale)
        self.cond_added, self.uncond_added = cond_added, uncond_added
        self.extra_channels = extra_channels
        self.hooks = hooks or DenoiserHooks()
        self.on_step = on_step
        self.step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        if self.on_step is not None:
            self.on_step()
        state = {"x": x, "sigma": sigma, "cond": self.cond, "uncond": self.uncond, "step": self.step}
        for hook in self.hooks.before:
            hook(state)
        x, sigma = state["x"], state["sigma"]
        passes = self._passes()
        outputs = self._run(x, sigma, [state[p] for p in passes], passes)
        state.update({f"{p}_denoised": out for p, out in zip(passes, outputs)})
        for hook in self.hooks.denoised:
            hook(state)
        state["x"] = self._combine(state, passes)
        for hook in self.hooks.after_cfg:
            hook(state)
        self.step += 1
        return state["x"]

    def _passes(self) -> list[str]:
        if self.cfg_scale == 1.0:
            return ["cond"]
        if self.cfg_scale == 0.0:
            return ["uncond"]
        return ["cond", "uncond"]

    def _combine(self, state: dict, passes: list[str]) -> torch.Tensor:
        if len(passes) == 1:
            return state[f"{passes[0]}_denoised"]
        cond, uncond = state["cond_denoised"], state["uncond_denoised"]
        return uncond + self.cfg_scale * (cond - uncond)

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, conds: list[Conditioning], passes: list[str]) -> list[torch.Tensor]:
        n = x.shape[0]
        context = torch.cat([_expand(c.context, n) for c in conds])
        added = self._added(passes, n)
        extra = None if self.extra_channels is None else torch.cat([self.extra_channels] * len(passes))
        out = self.inner(torch.cat([x] * len(passes)), torch.cat([sigma] * len(passes)), context, added, extra)
        return list(out.split(n))

    def _added(self, passes: list[str], n: int) -> dict | None:
        by_pass = {"cond": (self.cond, self.cond_added), "uncond": (self.uncond, self.uncond_added)}
        if self.cond.pooled is None:
            return None
        text = torch.cat([_expand(by_pass[p][0].pooled, n) for p in passes])
        time_ids = torch.cat([_expand(by_pass[p][1]["time_ids"], n) for p in passes])
        return {"text_embeds": text, "time_ids": time_ids}


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])
