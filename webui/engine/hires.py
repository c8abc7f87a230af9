"""Hires fix: after the first txt2img pass, upscale and run an img2img pass at the larger size.

A1111's rules: the target is width·scale × height·scale, or the explicit "resize to" size (one side 0 keeps
the aspect ratio; both given: scale to cover, then centre-crop). The second pass runs exactly
`hr_second_pass_steps` (0 = the first pass's steps) steps, taken from the end of a schedule of
int(steps / denoising_strength) steps, with fresh noise from the same seeds. It may use its own sampler,
schedule type, prompt and checkpoint (loaded through the engine's model manager).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import image_ops, processing, upscalers
from .errors import EngineError, InvalidParameterError
from .params import MAX_SIDE, GenerationParams
from .rng import ImageRNG
from .sampling.registry import build_sigmas, resolve_sampler_and_schedule

if TYPE_CHECKING:
    from .job_plan import JobPlan

_USE_SAME = ("use same checkpoint", "use same sampler", "use same scheduler", "none")


def chosen(value: str | None) -> str | None:
    """A hires-pass override, or None for the UI's "Use same …" choices and empty values."""
    if value is None or not str(value).strip() or str(value).strip().lower() in _USE_SAME:
        return None
    return str(value).strip()


@dataclass(frozen=True)
class HiresSize:
    width: int          # the second pass's size
    height: int
    cover_width: int    # the size upscaled to before the centre crop (equal unless both sides were given)
    cover_height: int


def _eight(v: float) -> int:
    return max(8, int(v) // 8 * 8)


def target_size(p: GenerationParams) -> HiresSize:
    w, h, rx, ry = p.width, p.height, p.hr_resize_x, p.hr_resize_y
    if rx == 0 and ry == 0:
        tw, th = w * p.hr_scale, h * p.hr_scale
        cw, ch = tw, th
    elif ry == 0:
        tw, th = rx, rx * h // w
        cw, ch = tw, th
    elif rx == 0:
        tw, th = ry * w // h, ry
        cw, ch = tw, th
    else:
        tw, th = rx, ry
        cw, ch = (rx, rx * h // w) if w * ry < rx * h else (ry * w // h, ry)
    size = HiresSize(_eight(tw), _eight(th), max(_eight(cw), _eight(tw)), max(_eight(ch), _eight(th)))
    if max(size.cover_width, size.cover_height) > MAX_SIDE:
        raise InvalidParameterError("hr_scale", f"the hires size {size.width}x{size.height} is over {MAX_SIDE} pixels")
    return size


def second_pass_sigmas(sampler, schedule_info, steps: int, denoise: float, model_schedule, device) -> torch.Tensor:
    """The last `steps` steps of a schedule of int(steps / denoise) steps (A1111's img2img with fixed steps)."""
    total = max(steps, int(steps / min(denoise, 0.999)))
    full = build_sigmas(sampler, schedule_info, total, model_schedule, device)
    return full[len(full) - steps - 1:]


def _crop_latent(latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (latent.shape[2] - height) // 2, (latent.shape[3] - width) // 2
    return latent[:, :, top:top + height, left:left + width]


class HiresPass:
    def __init__(self, p: GenerationParams):
        self.p = p
        self.upscaler = upscalers.canonical(p.hr_upscaler)
        self.size = target_size(p)
        self.enabled = p.denoising_strength > 0
        self.steps = (p.hr_second_pass_steps or p.steps) if self.enabled else 0
        self.checkpoint = chosen(p.hr_checkpoint_name)
        self.sampler_name = chosen(p.hr_sampler_name)
        self.scheduler = chosen(p.hr_scheduler)
        self.prompt = p.hr_prompt or p.prompt
        self.negative = p.hr_negative_prompt or p.negative_prompt

    def infotext(self) -> dict[str, Any]:
        """A1111's hires keys, in its order; only the ones that differ from the first pass are written."""
        p, out = self.p, {}
        if self.prompt != p.prompt:
            out["Hires prompt"] = self.prompt
        if self.negative != p.negative_prompt:
            out["Hires negative prompt"] = self.negative
        if self.scheduler:
            out["Hires schedule type"] = self.scheduler
        if p.hr_resize_x == 0 and p.hr_resize_y == 0:
            out["Hires upscale"] = p.hr_scale
        else:
            out["Hires resize"] = (p.hr_resize_x, p.hr_resize_y)
        if p.hr_second_pass_steps:
            out["Hires steps"] = p.hr_second_pass_steps
        out["Hires upscaler"] = self.upscaler
        if self.sampler_name:
            out["Hires sampler"] = self.sampler_name
        return out

    # ---- the pass --------------------------------------------------------------------------------
    def run(self, plan: "JobPlan", state, samples: torch.Tensor) -> torch.Tensor | None:
        ctx, p, batch = plan.ctx, self.p, plan.batch
        upscaled_from = plan.decode_model
        model = plan.load_model(self.checkpoint, "Hires checkpoint") if self.checkpoint else plan.decode_model
        latent = self._upscale(plan, upscaled_from, model, samples)
        if not self.enabled:
            return latent
        sampler, schedule = self._sampler(ctx)
        sigmas = second_pass_sigmas(sampler, schedule, self.steps, p.denoising_strength, model.schedule, ctx.device)
        rng = ImageRNG(tuple(latent.shape[1:]), batch.seeds, batch.subseeds, p.subseed_strength,
                       (p.seed_resize_from_w, p.seed_resize_from_h))
        noise = rng.first().to(latent.device)
        x = latent + noise * sigmas[0]
        n = len(batch.seeds)
        cond, uncond = plan.encode(model, [self.prompt] * n, [self.negative] * n, hires_steps=self.steps)
        sized = dataclasses.replace(p, width=self.size.width, height=self.size.height)
        added = processing._time_ids(model, sized, ctx.device)
        extra = plan.plain_image_conditioning(model, x)
        saved = state.ctx
        state.ctx = dataclasses.replace(saved, model=model, sampler=sampler, schedule=schedule)
        try:
            return state.run(x, sigmas, cond, uncond, rng, added, extra, wrap=plan.wrap_second_pass)
        finally:
            state.ctx = saved

    def _sampler(self, ctx):
        if not self.sampler_name and not self.scheduler:
            return ctx.sampler, ctx.schedule
        if ctx.samplers is None or ctx.schedules is None:
            raise EngineError("a hires sampler or schedule type needs the engine's sampler registries")
        return resolve_sampler_and_schedule(ctx.samplers, ctx.schedules, self.sampler_name or ctx.sampler.name,
                                            self.scheduler or ctx.schedule.label)

    def _upscale(self, plan: "JobPlan", source, model, samples: torch.Tensor) -> torch.Tensor:
        s = self.size
        scale = processing._latent_scale(model)
        if upscalers.is_latent(self.upscaler):
            big = upscalers.upscale_latent(samples, self.upscaler, s.cover_height // scale, s.cover_width // scale)
            return _crop_latent(big, s.height // scale, s.width // scale)
        images = image_ops.tensor_to_pil(processing.decode_latents(source, samples))
        resized = [image_ops.resize_image(1, upscalers.upscale_image(im, self.upscaler, s.cover_width, s.cover_height),
                                          s.width, s.height) for im in images]
        return processing.encode_images(model, resized, plan.ctx.device)
