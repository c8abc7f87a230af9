"""txt2img and img2img: prompts → conditioning → noise → sampler → VAE → images with infotext.

This is the one denoising loop of the app. It owns seeds, noise, the img2img step arithmetic, VAE
encode/decode with the fp32 NaN fallback, interruption, and the infotext of every image.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from . import image_ops, infotext, precision
from .conditioning import PromptOptions
from .denoiser import CFGDenoiser, DenoiserHooks, UNetDenoiser
from .errors import EngineError
from .job_hooks import BatchInfo, ProcessingHooks
from .model_manager import SDModel
from .params import GenerationParams
from .prompt_parser import DEFAULT_EMPHASIS
from .prompt_schedule import BatchConditioning, ConditioningCache
from .rng import ImageRNG, resolve_seed
from .sampling.noise import brownian_noise_sampler
from .sampling.registry import (SamplerInfo, ScheduleInfo, build_sigmas, initial_noise_scale, model_schedule,
                                run_sampler)

log = logging.getLogger(__name__)
VERSION = "studio-0.1.0"
REFINER_AESTHETIC = (6.0, 2.5)   # positive / negative aesthetic score, as A1111 uses for the SDXL refiner


class StopSampling(Exception):
    """Raised between steps when the job is interrupted or the current batch is skipped."""


class NansError(EngineError):
    pass


@dataclass
class JobControl:
    """Flags a running job checks between steps. Set from another thread (UI/API)."""
    interrupted: bool = False
    skipped: bool = False

    def check(self) -> None:
        if self.interrupted or self.skipped:
            raise StopSampling()


@dataclass
class StepInfo:
    step: int                 # steps done in this job so far
    total_steps: int
    batch_index: int
    denoised: torch.Tensor    # current x0 prediction (latent)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    params: GenerationParams
    info: dict = field(default_factory=dict)
    interrupted: bool = False
    extra_images: dict[str, list[Image.Image]] = field(default_factory=dict)   # e.g. "depth": the maps used


@dataclass
class ProcessingContext:
    """Everything processing needs from the layers around it, passed explicitly."""
    model: SDModel
    sampler: SamplerInfo
    schedule: ScheduleInfo
    device: torch.device
    model_hash: str | None = None
    vae_hash: str | None = None
    hooks: DenoiserHooks = field(default_factory=DenoiserHooks)
    # for jobs that switch checkpoints (refiner, hires checkpoint), pick a hires sampler, or estimate depth
    models: object | None = None        # ModelManager
    samplers: object | None = None      # SamplerRegistry
    schedules: object | None = None     # ScheduleRegistry
    depth: object | None = None         # depth.DepthEstimators
    # prompt encoding: emphasis and padding settings, and the textual-inversion library (issue #6)
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    embeddings: object | None = None    # embeddings.EmbeddingLibrary


def _seeds(p: GenerationParams) -> tuple[list[int], list[int]]:
    n = p.batch_size * p.n_iter
    seed, subseed = resolve_seed(p.seed), resolve_seed(p.subseed)
    return [seed + i for i in range(n)], [subseed + i for i in range(n)]


def _latent_scale(model: SDModel) -> int:
    vae = model.vae or model.own_vae
    return 2 ** (len(vae.config.block_out_channels) - 1)


class _CondCache:
    """A job's prompt conditioning for one model: each distinct text encoded once.

    `batch` returns step-dependent conditioning (prompt editing, alternation, AND; see prompt_schedule.py).
    Given the context and params, it uses the job's prompt options and embeddings and records
    "TI hashes" / "Emphasis" in the infotext; without them (e.g. a second model in a job) it uses defaults.
    """

    def __init__(self, model: SDModel, clip_skip: int, ctx: "ProcessingContext | None" = None,
                 p: GenerationParams | None = None):
        self.model, self.p = model, p
        self.options = ctx.prompt_options if ctx is not None else PromptOptions()
        library = ctx.embeddings if ctx is not None else None
        self.embeddings = library.for_model(model) if library is not None else None
        self.cache = ConditioningCache(model.prompt_encoder, clip_skip, self.options, self.embeddings)

    def batch(self, prompts: list[str], negatives: list[str], device, steps: int | None = None,
              hires_steps: int | None = None) -> tuple[BatchConditioning, BatchConditioning]:
        """`steps`: the step count prompt editing refers to (default: the job's); for a hires pass, also
        give its own step count as `hires_steps`."""
        steps = steps or (self.p.steps if self.p is not None else 1)
        cond = self.cache.positive(prompts, steps, hires_steps, device)
        uncond = self.cache.negative(negatives, steps, hires_steps, device)
        if self.p is not None:
            self._record(cond, uncond)
        return cond, uncond

    def _record(self, cond: BatchConditioning, uncond: BatchConditioning) -> None:
        extra = self.p.extra_generation_params
        used = self.cache.used_embeddings
        if used and self.embeddings is not None:
            hashes = [f"{_infotext_name(name)}: {self.embeddings.short_hash(emb)}" for name, emb in used.items()]
            extra["TI hashes"] = ", ".join(hashes)
        if self.options.emphasis != DEFAULT_EMPHASIS:
            extra["Emphasis"] = self.options.emphasis
        if self.options.pad_conds and cond.lengths() != uncond.lengths():
            extra["Pad conds"] = True


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")


def _time_ids(model: SDModel, p: GenerationParams, device) -> tuple[dict | None, dict | None]:
    if model.prompt_encoder.encoders[-1].kind != "open_clip_g":
        return None, None
    h, w = p.height, p.width
    if model.family.value == "sdxl-refiner":
        pos, neg = ([h, w, 0, 0, score] for score in REFINER_AESTHETIC)
    else:
        pos = neg = [h, w, 0, 0, h, w]
    return ({"time_ids": torch.tensor([pos], dtype=torch.float32, device=device)},
            {"time_ids": torch.tensor([neg], dtype=torch.float32, device=device)})


def img2img_sigmas(sigmas: torch.Tensor, steps: int, denoising_strength: float) -> torch.Tensor:
    """A1111's img2img step arithmetic: run the last int(strength·steps)+1 steps of the full schedule."""
    t_enc = int(min(denoising_strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


@torch.no_grad()
def encode_images(model: SDModel, images: list[Image.Image], device) -> torch.Tensor:
    """Pixels → scaled latents, using the distribution's mean so the result is deterministic."""
    vae = model.vae
    x = image_ops.pil_to_tensor(images).to(device, vae.dtype)
    latents = vae.encode(x).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(model: SDModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents → pixels in [-1, 1]; a NaN result in reduced precision is redone in fp32."""
    vae = model.vae
    z = latents / vae.config.scaling_factor
    out = vae.decode(z.to(vae.dtype)).sample
    if torch.isnan(out).any():
        if not precision.is_reduced(vae):
            raise NansError("the VAE produced NaN values even in fp32; the VAE file may be broken")
        log.warning("VAE decode gave NaN in reduced precision; redoing it in fp32")
        with precision.full_precision(vae):
            out = vae.decode(z.float()).sample
    return out.float()


def _infotext(ctx: ProcessingContext, p: GenerationParams, prompt: str, negative: str, seed: int, subseed: int,
              is_img2img: bool) -> str:
    model = ctx.model
    fixed = {
        "Steps": p.steps, "Sampler": ctx.sampler.name, "Schedule type": ctx.schedule.label, "CFG scale": p.cfg_scale,
        "Seed": seed, "Size": (p.width, p.height),
        "Model hash": ctx.model_hash[:10] if ctx.model_hash else None, "Model": model.file.stem,
        "VAE hash": ctx.vae_hash[:10] if ctx.vae_hash else None,
        "VAE": model.vae_file.path.name if model.vae_file else None,
        "Variation seed": subseed if p.subseed_strength > 0 else None,
        "Variation seed strength": p.subseed_strength if p.subseed_strength > 0 else None,
        "Seed resize from": (p.seed_resize_from_w, p.seed_resize_from_h) if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None,
        "Denoising strength": p.denoising_strength if is_img2img else None,
        "Clip skip": p.clip_skip, "RNG": "CPU",
    }
    params = infotext.generation_params(fixed, extra=p.extra_generation_params, trailing={"Version": VERSION})
    return infotext.create_infotext(prompt, negative, params)


class _Sampling:
    """One job's sampling state: counts steps across batches and turns callbacks into progress."""

    def __init__(self, ctx: ProcessingContext, p: GenerationParams, steps_per_batch: int,
                 control: JobControl, progress: Callable[[StepInfo], None] | None):
        self.ctx, self.p, self.control, self.progress = ctx, p, control, progress
        self.per_batch = steps_per_batch
        self.total = steps_per_batch * p.n_iter
        self.done = 0
        self.batch_index = 0
        self.last_denoised: torch.Tensor | None = None
        self.sampler_step = 0   # the current pass's step index; scheduled prompts follow it

    def callback(self, d: dict) -> None:
        self.done += 1
        self.sampler_step = d["i"] + 1
        self.last_denoised = d["denoised"]
        if self.progress is not None:
            self.progress(StepInfo(self.done, self.total, self.batch_index, d["denoised"]))

    def make_denoiser(self, model: SDModel, cond, uncond, added, extra_channels: torch.Tensor | None) -> CFGDenoiser:
        inner = UNetDenoiser(model.unet, model_schedule(self.ctx.sampler, model.schedule), model.prediction_type,
                             model.unet.dtype)
        return CFGDenoiser(inner, cond, uncond, self.p.cfg_scale, added[0], added[1], extra_channels,
                           hooks=self.ctx.hooks, on_step=self.control.check,
                           pad_conds=self.ctx.prompt_options.pad_conds, step_of=lambda: self.sampler_step)

    def run(self, x: torch.Tensor, sigmas: torch.Tensor, cond, uncond, rng: ImageRNG, added,
            extra_channels: torch.Tensor | None, wrap: Callable | None = None) -> torch.Tensor:
        sampler = self.ctx.sampler
        denoiser = self.make_denoiser(self.ctx.model, cond, uncond, added, extra_channels)
        if wrap is not None:
            denoiser = wrap(denoiser)   # inpaint blending, refiner switch (job_plan.py)
        if sampler.options.get("brownian_noise"):
            noise = brownian_noise_sampler(x, sigmas, rng.seeds)
        else:
            noise = rng.noise_sampler(x.device, x.dtype)
        self.last_denoised = None
        self.sampler_step = 0
        try:
            return run_sampler(sampler, denoiser, x, sigmas, extra_args={}, callback=self.callback,
                               noise_sampler=noise, **self.p.sampler_options)
        except StopSampling:
            if self.last_denoised is None:
                return None
            return self.last_denoised


def _job_lists(p: GenerationParams, hooks: ProcessingHooks, is_img2img: bool) -> None:
    """Fill A1111's p.all_* lists, then let `hooks.process` change them (and other fields of p)."""
    n = p.batch_size * p.n_iter
    p.all_seeds, p.all_subseeds = _seeds(p)
    p.all_prompts, p.all_negative_prompts = [p.prompt] * n, [p.negative_prompt] * n
    if hooks.process is None:
        return
    hooks.process(p)
    p.validate(img2img=is_img2img)
    n = p.batch_size * p.n_iter
    for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
        if len(getattr(p, name)) < n:
            raise EngineError(f"p.{name} has {len(getattr(p, name))} entries for {n} images")


def _call(hook: Callable | None, *args) -> None:
    if hook is not None:
        hook(*args)


def generate(ctx: ProcessingContext, p: GenerationParams, control: JobControl | None = None,
             progress: Callable[[StepInfo], None] | None = None,
             hooks: ProcessingHooks | None = None) -> GenerationResult:
    from .job_plan import JobPlan   # job_plan imports this module

    is_img2img = bool(p.init_images)
    p.validate(img2img=is_img2img)
    control = control or JobControl()
    hooks = hooks or ProcessingHooks()
    _job_lists(p, hooks, is_img2img)
    plan = JobPlan(ctx, p)
    model, device = ctx.model, ctx.device
    seeds, subseeds = p.all_seeds, p.all_subseeds
    scale = _latent_scale(model)
    shape = (model.latent_channels, p.height // scale, p.width // scale)
    full_sigmas = build_sigmas(ctx.sampler, ctx.schedule, p.steps, model.schedule, device)
    sigmas = img2img_sigmas(full_sigmas, p.steps, p.denoising_strength) if is_img2img else full_sigmas
    init_latent = plan.init_latent
    conds = _CondCache(model, p.clip_skip, ctx, p)
    added = _time_ids(model, p, device)
    state = _Sampling(ctx, p, len(sigmas) - 1 + plan.extra_steps, control, progress)
    images, texts = [], []
    used: dict[str, list] = {"prompts": [], "negative_prompts": [], "seeds": [], "subseeds": []}
    started = time.time()
    for b in range(p.n_iter):
        if control.interrupted:
            break
        control.skipped = False
        state.batch_index = b
        sl = slice(b * p.batch_size, (b + 1) * p.batch_size)
        batch = BatchInfo(b, p.all_prompts[sl], p.all_negative_prompts[sl], seeds[sl], subseeds[sl])
        _call(hooks.before_batch, p, batch)
        cond, uncond = conds.batch(batch.prompts, batch.negative_prompts, device)
        _call(hooks.process_batch, p, batch)
        rng = ImageRNG(shape, batch.seeds, batch.subseeds, p.subseed_strength,
                       (p.seed_resize_from_w, p.seed_resize_from_h), latent_scale=scale)
        noise = rng.first().to(device)
        plan.begin_batch(state, noise, batch.prompts, batch.negative_prompts, batch.seeds, batch.subseeds)
        if init_latent is None:
            x = noise * initial_noise_scale(ctx.sampler, sigmas)
        else:
            x = plan.start_latent(noise) + noise * sigmas[0]
        samples = state.run(x, sigmas, cond, uncond, rng, added, plan.image_conditioning(x), wrap=plan.wrap)
        if plan.hires is not None and samples is not None:
            _call(hooks.before_hr, p, batch)
        samples = plan.second_pass(state, samples)   # hires fix
        state.done = (b + 1) * state.per_batch   # a skipped batch counts as finished for progress
        if samples is None:
            continue
        if torch.isnan(samples).any():
            raise NansError("the UNet produced NaN values; try fp32 (--no-half) or another sampler")
        decoded = plan.finish(image_ops.tensor_to_pil(decode_latents(plan.decode_model, samples)))
        if hooks.postprocess_batch is not None:
            decoded = hooks.postprocess_batch(p, batch, decoded)
        for i, img in enumerate(decoded):
            if hooks.postprocess_image is not None:
                img = hooks.postprocess_image(p, batch, i, img)
            text = _infotext(ctx, p, batch.prompts[i], batch.negative_prompts[i], batch.seeds[i], batch.subseeds[i],
                             is_img2img)
            img.info["parameters"] = text
            images.append(img)
            texts.append(text)
            for key, values in used.items():
                values.append(getattr(batch, key)[i])
    n = len(images)
    result = GenerationResult(images, texts, used["seeds"], used["subseeds"], used["prompts"],
                              used["negative_prompts"], p, interrupted=control.interrupted)
    result.info = _info_dict(ctx, p, result, seeds, subseeds, is_img2img) | plan.info()
    result.extra_images = plan.extra_images
    log.info("generated %d image(s) in %.2fs", n, time.time() - started)
    return result


@torch.no_grad()
def _image_conditioning(model: SDModel, x: torch.Tensor, device) -> torch.Tensor | None:
    """Extra UNet input channels when no mask or depth map is given.

    Inpainting models (9 channels) get a full mask and the latent of a mid-grey image, as A1111 does for
    txt2img; depth models (5 channels) get a flat depth map.
    """
    extra = model.unet.config.in_channels - model.latent_channels
    if extra <= 0:
        return None
    n, _, h, w = x.shape
    if extra == 1:
        return torch.zeros(n, 1, h, w, device=device, dtype=x.dtype)
    scale = _latent_scale(model)
    grey = Image.new("RGB", (w * scale, h * scale), (127, 127, 127))
    latent = encode_images(model, [grey], device).to(x.dtype).expand(n, -1, -1, -1)
    return torch.cat([torch.ones(n, 1, h, w, device=device, dtype=x.dtype), latent], dim=1)


def _init_latent(model: SDModel, p: GenerationParams, device) -> torch.Tensor:
    images = [image_ops.resize_image(p.resize_mode, im, p.width, p.height) for im in p.init_images]
    latents = encode_images(model, images, device)
    if latents.shape[0] == 1 and p.batch_size > 1:
        latents = latents.expand(p.batch_size, *latents.shape[1:])
    if latents.shape[0] != p.batch_size:
        raise EngineError(f"got {latents.shape[0]} init images for a batch of {p.batch_size}")
    return latents


def _info_dict(ctx: ProcessingContext, p: GenerationParams, r: GenerationResult, seeds, subseeds, is_img2img) -> dict:
    """A1111's `info` fields (the API returns this as a JSON string)."""
    model = ctx.model
    return {
        "prompt": p.prompt, "all_prompts": r.prompts, "negative_prompt": p.negative_prompt,
        "all_negative_prompts": r.negative_prompts, "seed": seeds[0], "all_seeds": r.seeds,
        "subseed": subseeds[0], "all_subseeds": r.subseeds, "subseed_strength": p.subseed_strength,
        "width": p.width, "height": p.height, "sampler_name": ctx.sampler.name, "cfg_scale": p.cfg_scale,
        "steps": p.steps, "batch_size": p.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model.file.stem, "sd_model_hash": ctx.model_hash[:10] if ctx.model_hash else None,
        "sd_vae_name": model.vae_file.path.name if model.vae_file else None,
        "sd_vae_hash": ctx.vae_hash[:10] if ctx.vae_hash else None,
        "seed_resize_from_w": p.seed_resize_from_w or -1, "seed_resize_from_h": p.seed_resize_from_h or -1,
        "denoising_strength": p.denoising_strength if is_img2img else None,
        "extra_generation_params": dict(p.extra_generation_params), "index_of_first_image": 0,
        "infotexts": r.infotexts, "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": p.clip_skip, "is_using_inpainting_conditioning": False, "version": VERSION,
    }
