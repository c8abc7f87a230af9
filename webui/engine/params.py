"""What a generation request carries, and the checks every face (UI, API, CLI) relies on."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

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
    # sampler knobs (A1111's s_churn, s_tmin, s_tmax, s_noise, eta) by name
    sampler_options: dict[str, float] = field(default_factory=dict)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)

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
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InvalidParameterError("prompt", "must be text")
        if img2img:
            self._validate_img2img()

    def _validate_img2img(self) -> None:
        if not self.init_images:
            raise InvalidParameterError("init_images", "img2img needs an init image")
        _check_float(self, "denoising_strength", 0.0, 1.0)
        if self.resize_mode not in range(len(RESIZE_MODES)):
            raise InvalidParameterError("resize_mode", f"must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}) or 2 ({RESIZE_MODES[2]})")


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
