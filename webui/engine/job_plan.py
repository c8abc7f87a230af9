"""What a job does around the plain sampling loop: inpainting, depth maps, the hires fix and the refiner.

`processing.generate` owns seeds, conditioning, the loop and the infotext; it asks the plan at fixed points:

- `init_latent` / `start_latent(noise)`: what img2img starts from (inpaint crops, fills and masked content);
- `begin_batch(...)`, then `image_conditioning(x)` and `wrap(denoiser)` for each batch's first pass
  (extra UNet channels; per-step mask blending; the refiner switch);
- `second_pass(state, samples)`: the hires fix;
- `decode_model` and `finish(images)`: which VAE decodes, and the composite / paste-back of inpainting.

Checkpoint switches (refiner, hires checkpoint) go through the engine's model manager; `checkpoint_switches`
keeps the models of one job cached together and brings the job's first model back at the end.
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import depth, image_ops, inpaint, processing
from .errors import EngineError, InvalidParameterError
from .hires import HiresPass, chosen
from .params import GenerationParams
from .refiner import RefinerSwitch

log = logging.getLogger(__name__)
INPAINT_EXTRA_CHANNELS = 5     # mask + masked-image latent
DEPTH_EXTRA_CHANNELS = 1


def _extra_channels(model) -> int:
    return int(model.unet.config.in_channels) - model.latent_channels


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else t[:1].expand(n, *t.shape[1:])


def _scaling(model) -> float:
    return float((model.vae or model.own_vae).config.scaling_factor)


def checkpoint_title(models, model) -> str:
    """A1111's short title, "stem [10-hex hash]", as the Refiner / Hires checkpoint infotext keys use it."""
    sha = models.model_hash(model) if models is not None else None
    return f"{model.file.stem} [{sha[:10]}]" if sha else model.file.stem


@contextmanager
def checkpoint_switches(models, p: GenerationParams) -> Iterator[None]:
    """Around a job that may load other checkpoints: keep them all cached for the job, then restore."""
    extra = {n for n in (p.refiner_checkpoint or None, chosen(p.hr_checkpoint_name) if p.enable_hr else None) if n}
    base = models.current
    if not extra or base is None:
        yield
        return
    old_size = models.cache_size
    models.cache_size = max(old_size, 1 + len(extra))
    try:
        yield
    finally:
        models.cache_size = old_size
        try:
            models.load(base.file.path)   # also evicts what the job added beyond the cache size
        except EngineError as exc:
            log.error("could not switch back to %s after the job: %s", base.name, exc)


@dataclass
class Batch:
    state: object            # processing._Sampling
    noise: torch.Tensor
    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    subseeds: list[int]


class JobPlan:
    def __init__(self, ctx, p: GenerationParams):
        self.ctx, self.p, self.device = ctx, p, ctx.device
        self.base = ctx.model
        self.decode_model = ctx.model
        self.extra_images: dict[str, list[Image.Image]] = {}
        self.batch: Batch | None = None
        self._conds: dict[int, processing._CondCache] = {}
        self._check_inputs()
        self.inpaint = inpaint.prepare(p) if p.mask is not None else None
        self.images = self._sampled_images()
        self.init_latent = self._init_latent() if self.images else None
        self.nmask = self._latent_mask()
        self.blend = self.inpaint is not None and _extra_channels(self.base) != INPAINT_EXTRA_CHANNELS
        self.cond_image = self._first_pass_conditioning()
        self.hires = HiresPass(p) if p.enable_hr else None
        self.extra_steps = self.hires.steps if self.hires is not None else 0
        self._record()

    # ---- checks and preparation ------------------------------------------------------------------
    def _check_inputs(self) -> None:
        p, model = self.p, self.base
        if p.depth_map is not None and _extra_channels(model) != DEPTH_EXTRA_CHANNELS:
            raise InvalidParameterError("depth_map", f"{model.name} is {model.family.label}, not a depth model; "
                                                     "load an SD 2 depth checkpoint (512-depth-ema) to use a depth map")

    def _sampled_images(self) -> list[Image.Image]:
        p = self.p
        if not p.init_images:
            return []
        if self.inpaint is not None:
            return self.inpaint.images
        return [image_ops.resize_image(p.resize_mode, im, p.width, p.height) for im in p.init_images]

    def _init_latent(self) -> torch.Tensor:
        if self.inpaint is None:
            return processing._init_latent(self.base, self.p, self.device)
        latents = processing.encode_images(self.base, self.images, self.device)
        if latents.shape[0] == 1 and self.p.batch_size > 1:
            latents = latents.expand(self.p.batch_size, *latents.shape[1:])
        if latents.shape[0] != self.p.batch_size:
            raise EngineError(f"got {latents.shape[0]} init images for a batch of {self.p.batch_size}")
        return latents

    def _latent_mask(self) -> torch.Tensor | None:
        if self.inpaint is None:
            return None
        h, w = self.init_latent.shape[-2:]
        return inpaint.latent_mask(self.inpaint.mask, h, w, self.p.mask_round, like=self.init_latent)

    def _latent_hw(self, p: GenerationParams) -> tuple[int, int]:
        scale = processing._latent_scale(self.base)
        return p.height // scale, p.width // scale

    def _first_pass_conditioning(self) -> torch.Tensor | None:
        """Extra UNet channels computed once per job; None means the plain ones (processing's defaults)."""
        extra = _extra_channels(self.base)
        if extra == DEPTH_EXTRA_CHANNELS:
            return self._depth()
        if extra == INPAINT_EXTRA_CHANNELS and self.inpaint is not None:
            return self._inpaint_conditioning()
        return None

    def _depth_source(self) -> Image.Image | None:
        p, dm = self.p, self.p.depth_map
        if dm is None:
            return None
        if self.inpaint is not None and self.inpaint.box is not None:
            dm = dm.resize(p.init_images[0].size, Image.Resampling.BICUBIC).crop(self.inpaint.box)
            return dm.convert("F").resize((p.width, p.height), Image.Resampling.BICUBIC)
        if p.resize_mode == 0 or not p.init_images:
            return dm.convert("F").resize((p.width, p.height), Image.Resampling.BICUBIC)
        return image_ops.resize_image(p.resize_mode, dm.convert("L"), p.width, p.height).convert("L")

    def _depth(self) -> torch.Tensor | None:
        source = self._depth_source()
        if source is None and not self.images:
            return None      # txt2img without a depth map: the plain (flat) channel
        d = depth.depth_conditioning(self.base, self.images, source, self.ctx.depth, self._latent_hw(self.p),
                                     self.device)
        self.extra_images["depth"] = [depth.to_image(d[i], (self.p.width, self.p.height)) for i in range(d.shape[0])]
        return d

    @torch.no_grad()
    def _inpaint_conditioning(self) -> torch.Tensor:
        """9-channel models: [mask, latent of the image with the masked area blanked] (A1111's layout)."""
        prep = self.inpaint
        m = torch.from_numpy(np.asarray(prep.mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        if self.p.mask_round:
            m = m.round()
        masked = image_ops.pil_to_tensor(prep.images) * (1.0 - m)
        vae = self.base.vae
        latent = vae.encode(masked.to(self.device, vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
        small = F.interpolate(m, size=latent.shape[-2:]).to(latent)
        return torch.cat([small.expand(latent.shape[0], -1, -1, -1), latent], dim=1)

    def _record(self) -> None:
        p, extra = self.p, self.p.extra_generation_params
        if self.hires is not None:
            extra["Denoising strength"] = p.denoising_strength
            extra.update(self.hires.infotext())
        if self.inpaint is not None:
            if p.mask_blur_x == p.mask_blur_y:
                extra["Mask blur"] = p.mask_blur_x
            if p.inpainting_mask_invert:
                extra["Mask mode"] = inpaint.MASK_MODES[1]
            extra["Inpaint area"] = inpaint.INPAINT_AREAS[int(bool(p.inpaint_full_res))]
            if p.inpaint_full_res:
                extra["Masked area padding"] = p.inpaint_full_res_padding
            extra["Masked content"] = inpaint.FILL_MODES[p.inpainting_fill]

    # ---- what generate() calls -------------------------------------------------------------------
    def start_latent(self, noise: torch.Tensor) -> torch.Tensor:
        if self.inpaint is None:
            return self.init_latent
        return inpaint.start_latent(self.init_latent, noise, self.nmask, self.inpaint.fill)

    def begin_batch(self, state, noise: torch.Tensor, prompts: list[str], negatives: list[str],
                    seeds: list[int], subseeds: list[int]) -> None:
        self.batch = Batch(state, noise, list(prompts), list(negatives), list(seeds), list(subseeds))
        models = self.ctx.models
        if models is not None and models.current is not self.base and models.current is not None:
            models.load(self.base.file.path)   # a refiner may have taken over in the previous batch
        self.decode_model = self.base

    def image_conditioning(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.cond_image is None:
            return processing._image_conditioning(self.base, x, self.device)
        return _expand(self.cond_image, x.shape[0]).to(x.dtype)

    def plain_image_conditioning(self, model, x: torch.Tensor) -> torch.Tensor | None:
        """Extra channels for a pass without a mask (hires, refiner): an uploaded depth map, or the defaults."""
        if _extra_channels(model) == DEPTH_EXTRA_CHANNELS and self.p.depth_map is not None:
            h, w = x.shape[-2:]
            d = depth.normalize(depth.image_to_depth(self.p.depth_map), h, w).to(x.device, x.dtype)
            return _expand(d, x.shape[0])
        return processing._image_conditioning(model, x, self.device)

    def wrap(self, denoiser: Callable) -> Callable:
        """The first pass's denoiser, with the refiner switch (unless the hires pass gets it) and mask blending."""
        if self.p.refiner_checkpoint and self.hires is None:
            denoiser = self._refiner_switch(denoiser, self.p, self.batch.prompts, self.batch.negatives)
        if self.blend:
            denoiser = inpaint.MaskBlend(denoiser, self.init_latent, self.batch.noise, self.nmask)
        return denoiser

    def wrap_second_pass(self, denoiser: Callable) -> Callable:
        """A1111's default ("second pass"): with the hires fix on, the refiner takes part in the second pass."""
        if not self.p.refiner_checkpoint:
            return denoiser
        sized = self._hires_sized()
        n = len(self.batch.seeds)
        return self._refiner_switch(denoiser, sized, [self.hires.prompt] * n, [self.hires.negative] * n,
                                    self.hires.steps)

    def second_pass(self, state, samples: torch.Tensor | None) -> torch.Tensor | None:
        if self.hires is None or samples is None or state.control.interrupted or state.control.skipped:
            return samples
        return self.hires.run(self, state, samples)

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        if self.inpaint is None:
            return images
        return [inpaint.finish(self.inpaint, im, i) for i, im in enumerate(images)]

    def info(self) -> dict:
        out = {}
        if self.hires is not None:
            out["denoising_strength"] = self.p.denoising_strength
        if self.inpaint is not None and _extra_channels(self.base) == INPAINT_EXTRA_CHANNELS:
            out["is_using_inpainting_conditioning"] = True
        return out

    # ---- other checkpoints -----------------------------------------------------------------------
    def load_model(self, name: str, infotext_key: str | None = None):
        """Load a checkpoint for this job through the model manager; its latents must fit the base model's."""
        models = self.ctx.models
        if models is None:
            raise EngineError("switching checkpoints inside a job needs the engine's model manager")
        model = models.load(name)
        if model.latent_channels != self.base.latent_channels or _scaling(model) != _scaling(self.base):
            raise EngineError(f"{model.name} ({model.family.label}) cannot continue the latents of "
                              f"{self.base.name} ({self.base.family.label})")
        self.decode_model = model
        if infotext_key:
            self.p.extra_generation_params[infotext_key] = checkpoint_title(models, model)
        return model

    def encode(self, model, prompts: list[str], negatives: list[str], hires_steps: int | None = None):
        """Conditioning for another model of the job (or a hires pass, whose prompt editing counts its own steps)."""
        key = id(model)
        if key not in self._conds:
            self._conds[key] = processing._CondCache(model, self.p.clip_skip, self.ctx, self.p)
        return self._conds[key].batch(prompts, negatives, self.device, steps=self.p.steps, hires_steps=hires_steps)

    def _hires_sized(self) -> GenerationParams:
        return dataclasses.replace(self.p, width=self.hires.size.width, height=self.hires.size.height)

    def _refiner_switch(self, denoiser: Callable, sized: GenerationParams, prompts: list[str],
                        negatives: list[str], hires_steps: int | None = None) -> RefinerSwitch:
        state = self.batch.state

        def load(x: torch.Tensor) -> Callable:
            model = self.load_model(self.p.refiner_checkpoint, "Refiner")
            cond, uncond = self.encode(model, prompts, negatives, hires_steps)
            added = processing._time_ids(model, sized, self.device)
            extra = self.plain_image_conditioning(model, x)
            self.p.extra_generation_params["Refiner switch at"] = self.p.refiner_switch_at
            return state.make_denoiser(model, cond, uncond, added, extra)

        return RefinerSwitch(denoiser, self.base.schedule, self.p.refiner_switch_at, load)
