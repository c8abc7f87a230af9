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
from .prompt_schedule import BatchConditioning, StepConds, pad_with_empty


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
    """Batches cond and uncond through the UNet and applies the guidance formula.

    `cond`/`uncond` are plain `Conditioning`s or step-dependent `BatchConditioning`s (prompt editing,
    alternation, AND). With AND, image i has several cond rows j of weight w_j and
    denoised_i = uncond_i + scale · Σ_j w_j (cond_j − uncond_i)   (A1111's combine_denoised).
    Rows whose contexts differ in length run as separate UNet calls (A1111's default), or are padded with
    the empty prompt's chunk when `pad_conds` is set.
    """

    def __init__(self, inner: UNetDenoiser, cond: Conditioning | BatchConditioning,
                 uncond: Conditioning | BatchConditioning, cfg_scale: float,
                 cond_added: dict | None = None, uncond_added: dict | None = None,
                 extra_channels: torch.Tensor | None = None, hooks: DenoiserHooks | None = None,
                 on_step: Callable[[], None] | None = None, pad_conds: bool = False,
                 step_of: Callable[[], int] | None = None):
        self.inner = inner
        self.cond, self.uncond = cond, uncond
        self.cfg_scale = float(cfg_scale)
        self.cond_added, self.uncond_added = cond_added, uncond_added
        self.extra_channels = extra_channels
        self.hooks = hooks or DenoiserHooks()
        self.on_step = on_step
        self.pad_conds = pad_conds
        self.step = 0            # model calls so far
        self.step_of = step_of   # the sampler's step index (0-based), which picks scheduled conds

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        if self.on_step is not None:
            self.on_step()
        n = x.shape[0]
        at = self.step_of() if self.step_of is not None else self.step
        cond, uncond = _rows(self.cond, at, n), _rows(self.uncond, at, n)
        state = {"x": x, "sigma": sigma, "cond": cond.cond, "uncond": uncond.cond, "step": self.step,
                 "cond_owners": cond.owners, "cond_weights": cond.weights}
        for hook in self.hooks.before:
            hook(state)
        x, sigma = state["x"], state["sigma"]
        cond = StepConds(state["cond"], state["cond_owners"], state["cond_weights"])
        uncond = StepConds(state["uncond"], uncond.owners, uncond.weights)
        passes = self._passes(cond)
        outputs = self._run(x, sigma, {"cond": cond, "uncond": uncond}, passes)
        state.update({f"{p}_denoised": out for p, out in zip(passes, outputs)})
        for hook in self.hooks.denoised:
            hook(state)
        state["x"] = self._combine(state, passes, cond)
        for hook in self.hooks.after_cfg:
            hook(state)
        self.step += 1
        return state["x"]

    def _passes(self, cond: StepConds) -> list[str]:
        if self.cfg_scale == 1.0 and cond.simple:
            return ["cond"]
        if self.cfg_scale == 0.0:
            return ["uncond"]
        return ["cond", "uncond"]

    def _combine(self, state: dict, passes: list[str], cond: StepConds) -> torch.Tensor:
        if len(passes) == 1:
            return state[f"{passes[0]}_denoised"]
        cond_out, uncond_out = state["cond_denoised"], state["uncond_denoised"]
        if cond.simple and cond_out.shape == uncond_out.shape:   # plain CFG: no per-step index tensors
            return uncond_out + self.cfg_scale * (cond_out - uncond_out)
        owners = torch.tensor(cond.owners, device=uncond_out.device)
        weights = torch.tensor(cond.weights, device=uncond_out.device, dtype=uncond_out.dtype)
        weights = weights.reshape(-1, *([1] * (uncond_out.ndim - 1)))
        delta = torch.zeros_like(uncond_out).index_add_(0, owners, (cond_out - uncond_out[owners]) * weights)
        return uncond_out + self.cfg_scale * delta

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, sides: dict[str, StepConds],
             passes: list[str]) -> list[torch.Tensor]:
        batches = [self._inputs(x, sigma, p, sides[p]) for p in passes]
        lengths = {b[2].context.shape[1] for b in batches}
        if len(lengths) > 1 and self.pad_conds and self._empty() is not None:
            tokens = max(lengths)
            batches = [(b[0], b[1], pad_with_empty(b[2], tokens, self._empty()), b[3], b[4]) for b in batches]
            lengths = {tokens}
        if len(lengths) > 1:
            return [self._call([b]) for b in batches]
        return list(self._call(batches).split([b[0].shape[0] for b in batches]))

    def _empty(self) -> Conditioning | None:
        for side in (self.cond, self.uncond):
            if isinstance(side, BatchConditioning) and side.empty is not None:
                return side.empty
        return None

    def _inputs(self, x: torch.Tensor, sigma: torch.Tensor, name: str, rows: StepConds) -> tuple:
        """(x, sigma, conditioning, time_ids, extra channels) for one side's rows."""
        n = x.shape[0]
        if rows.owners == list(range(n)):
            pick = _same      # one row per image, in order: no index tensor, no gather copy
        else:
            index = torch.tensor(rows.owners, device=x.device)
            pick = lambda t: t[index]
        added = self.cond_added if name == "cond" else self.uncond_added
        time_ids = None if added is None else pick(_expand(added["time_ids"], n))
        extra = None if self.extra_channels is None else pick(_expand(self.extra_channels, n))
        return pick(x), pick(_expand(sigma, n)), rows.cond, time_ids, extra

    def _call(self, batches: list[tuple]) -> torch.Tensor:
        x = torch.cat([b[0] for b in batches])
        sigma = torch.cat([b[1] for b in batches])
        context = torch.cat([_expand(b[2].context, b[0].shape[0]) for b in batches])
        added = None
        if batches[0][2].pooled is not None and batches[0][3] is not None:
            added = {"text_embeds": torch.cat([_expand(b[2].pooled, b[0].shape[0]) for b in batches]),
                     "time_ids": torch.cat([b[3] for b in batches])}
        extra = None if batches[0][4] is None else torch.cat([b[4] for b in batches])
        return self.inner(x, sigma, context, added, extra)


def _rows(side: Conditioning | BatchConditioning, step: int, n: int) -> StepConds:
    if isinstance(side, BatchConditioning):
        return side.at(step)
    return StepConds(side, list(range(n)), [1.0] * n)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])
