"""What a generation request carries, and the checks every face (UI, API, CLI) relies on."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import inpaint, upscalers
from .errors import InvalidParameterError

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
MAX_SIDE = 8192


@dataclass
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    # img2img
    init_images: list[Image.Image] = field(default_factory=list)
    denoising_strength: float = 0.75
    resize_mode: int = 0
    # inpainting (img2img with a mask; A1111's field names and meanings)
    mask: Image.Image | None = None          # white = change; a mask with transparency uses its alpha
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 1                 # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False           # True: "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False     # True: "Inpaint not masked"
    # depth models (SD2-depth): an uploaded depth map (white = near); None = estimate it
    depth_map: Image.Image | None = None
    # hires fix (txt2img); the second pass uses denoising_strength
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # SDXL refiner: another checkpoint takes over once the noise level falls below this fraction
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    # sampler knobs (A1111's s_churn, s_tmin, s_tmax, s_noise, eta) by name
    sampler_options: dict[str, float] = field(default_factory=dict)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    # A1111's per-image lists: processing fills them at the start of every job (from prompt, negative_prompt,
    # seed, subseed); changes made by a `ProcessingHooks.process` hook are what the job then uses.
    all_prompts: list[str] = field(default_factory=list)
    all_negative_prompts: list[str] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)

    def validate(self, img2img: bool = False) -> None:
        _check_int(self, "steps", 1, 1000)
        _check_int(self, "batch_size", 1, 64)
        _check_int(self, "n_iter", 1, 10000)
        _check_int(self, "clip_skip", 1, 12)
        for name in ("width", "height"):
            _check_int(self, name, 8, MAX_SIDE)
            if getattr(self, name) % 8:
                raise InvalidParameterError(name, f"must be a multiple of 8 (got {getattr(self, name)})")
        _check_float(self, "cfg_scale", -100.0, 100.0)
        _check_float(self, "subseed_strength", 0.0, 1.0)
        for name in ("seed", "subseed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < -1 or value >= 2**32:
                raise InvalidParameterError(name, f"must be -1 (random) or an integer from 0 to {2**32 - 1} (got {value!r})")
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            _check_text(self, name)
        if img2img:
            self._validate_img2img()
        elif self.mask is not None:
            raise InvalidParameterError("mask", "a mask needs an init image (use img2img)")
        self._validate_extras()

    def _validate_img2img(self) -> None:
        if not self.init_images:
            raise InvalidParameterError("init_images", "img2img needs an init image")
        _check_float(self, "denoising_strength", 0.0, 1.0)
        if self.resize_mode not in range(len(RESIZE_MODES)):
            raise InvalidParameterError("resize_mode", f"must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}) or 2 ({RESIZE_MODES[2]})")
        if self.mask is not None:
            self._validate_mask()

    def _validate_mask(self) -> None:
        _check_int(self, "mask_blur_x", 0, 256)
        _check_int(self, "mask_blur_y", 0, 256)
        _check_int(self, "inpaint_full_res_padding", 0, MAX_SIDE)
        if self.inpainting_fill not in range(len(inpaint.FILL_MODES)):
            raise InvalidParameterError("inpainting_fill",
                                        "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)")
        inpaint.check_mask(self.mask, [im.size for im in self.init_images], bool(self.inpainting_mask_invert),
                           bool(self.mask_round))

    def _validate_extras(self) -> None:
        if self.depth_map is not None and not isinstance(self.depth_map, Image.Image):
            raise InvalidParameterError("depth_map", "must be an image (white = near)")
        if self.refiner_checkpoint:
            _check_float(self, "refiner_switch_at", 0.0, 1.0)
        if self.enable_hr:
            self._validate_hires()

    def _validate_hires(self) -> None:
        if self.init_images:
            raise InvalidParameterError("enable_hr", "hires fix is for txt2img; img2img takes no second pass")
        _check_float(self, "hr_scale", 1.0, 8.0)
        _check_int(self, "hr_second_pass_steps", 0, 1000)
        _check_int(self, "hr_resize_x", 0, MAX_SIDE)
        _check_int(self, "hr_resize_y", 0, MAX_SIDE)
        _check_float(self, "denoising_strength", 0.0, 1.0)
        if upscalers.canonical(self.hr_upscaler) is None:
            raise InvalidParameterError("hr_upscaler", f"unknown upscaler {self.hr_upscaler!r}; "
                                                       f"valid: {', '.join(upscalers.names())}")
        for name in ("hr_prompt", "hr_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise InvalidParameterError(name, "must be text")


def _check_text(p, name: str) -> None:
    value = getattr(p, name, "")
    if not isinstance(value, str):
        raise InvalidParameterError(name, "must be text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # e.g. a lone surrogate from JSON "\ud800": no tokenizer can read it
        raise InvalidParameterError(name, "contains characters that are not valid Unicode text") from None


def _check_int(p: GenerationParams, name: str, low: int, high: int) -> None:
    value = getattr(p, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(name, f"must be a whole number (got {value!r})")
    if not low <= value <= high:
        raise InvalidParameterError(name, f"must be between {low} and {high} (got {value})")


def _check_float(p: GenerationParams, name: str, low: float, high: float) -> None:
    value = getattr(p, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameterError(name, f"must be a number (got {value!r})")
    if not low <= value <= high:
        raise InvalidParameterError(name, f"must be between {low} and {high} (got {value})")


def resize_mode_index(value: int | str) -> int:
    """Accept A1111's resize-mode numbers or labels."""
    if isinstance(value, str) and not value.isdigit():
        labels = [m.lower() for m in RESIZE_MODES]
        if value.lower() not in labels:
            raise InvalidParameterError("resize_mode", f"unknown mode {value!r}; valid: {', '.join(RESIZE_MODES)}")
        return labels.index(value.lower())
    return int(value)
