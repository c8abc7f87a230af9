"""Between form values and generation requests: building `GenerationParams`, and filling forms from infotext.

Form values travel as a dict keyed by field name (the `GenerationParams` attribute where there is one);
nothing here imports Gradio, so the mapping is testable on its own.
"""
from __future__ import annotations

from typing import Any, Callable

from PIL import Image

from ..engine import upscalers
from ..engine.errors import InvalidParameterError
from ..engine.params import RESIZE_MODES, GenerationParams

# Fields every generation tab has, in the order their components are created.
COMMON_FIELDS = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
    "n_iter", "batch_size", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
)
REFINER_FIELDS = ("refiner_checkpoint", "refiner_switch_at")
# txt2img's own fields: the hires fix, then the refiner.
HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_denoising_strength", "hr_scale",
                "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_prompt",
                "hr_negative_prompt") + REFINER_FIELDS
IMG2IMG_FIELDS = ("init_image", "denoising_strength", "resize_mode") + REFINER_FIELDS

HIRES_UPSCALERS = tuple(upscalers.names())
USE_SAME_CHECKPOINT, USE_SAME_SAMPLER, NO_REFINER = "Use same checkpoint", "Use same sampler", "None"

_INT_FIELDS = {"steps", "width", "height", "n_iter", "batch_size", "seed", "subseed", "seed_resize_from_w",
               "seed_resize_from_h"}
_FLOAT_FIELDS = {"cfg_scale", "subseed_strength", "denoising_strength"}


def _whole(name: str, value: Any) -> int:
    """Numbers from the browser may arrive as floats (5.0); refuse real fractions with the field's name."""
    if value is None or value == "":
        raise InvalidParameterError(name, "is empty")
    number = float(value)
    if number != int(number):
        raise InvalidParameterError(name, f"must be a whole number (got {value})")
    return int(number)


def build_params(values: dict[str, Any], clip_skip: Any, img2img: bool = False) -> GenerationParams:
    """A request from one tab's form. Raises InvalidParameterError naming the field for unusable values."""
    kw = {name: values[name] for name in COMMON_FIELDS}
    for name in _INT_FIELDS:
        kw[name] = _whole(name, kw[name])
    for name in _FLOAT_FIELDS & set(kw):
        kw[name] = float(kw[name])
    params = GenerationParams(**kw, clip_skip=_whole("clip_skip", clip_skip))
    if img2img:
        image = values.get("init_image")
        if image is None:
            raise InvalidParameterError("init_image", "drop an image into the img2img box first")
        params.init_images = [_rgb(image)]
        params.denoising_strength = float(values["denoising_strength"])
        params.resize_mode = _resize_index(values["resize_mode"])
    elif values.get("enable_hr"):
        _hires(params, values)
    _refiner(params, values)
    return params


def _hires(params: GenerationParams, values: dict[str, Any]) -> None:
    params.enable_hr = True
    params.hr_upscaler = values["hr_upscaler"]
    params.hr_second_pass_steps = _whole("hr_second_pass_steps", values["hr_second_pass_steps"])
    params.hr_scale = float(values["hr_scale"])
    params.hr_resize_x = _whole("hr_resize_x", values["hr_resize_x"])
    params.hr_resize_y = _whole("hr_resize_y", values["hr_resize_y"])
    params.denoising_strength = float(values["hr_denoising_strength"])
    checkpoint, sampler = values.get("hr_checkpoint_name"), values.get("hr_sampler_name")
    params.hr_checkpoint_name = None if checkpoint in (None, "", USE_SAME_CHECKPOINT) else checkpoint
    params.hr_sampler_name = None if sampler in (None, "", USE_SAME_SAMPLER) else sampler
    params.hr_prompt = values.get("hr_prompt") or ""
    params.hr_negative_prompt = values.get("hr_negative_prompt") or ""


def _refiner(params: GenerationParams, values: dict[str, Any]) -> None:
    name = values.get("refiner_checkpoint")
    if name in (None, "", NO_REFINER):
        return
    params.refiner_checkpoint = name
    params.refiner_switch_at = float(values["refiner_switch_at"])


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_index(value: Any) -> int:
    if isinstance(value, int):
        return value
    if value in RESIZE_MODES:
        return RESIZE_MODES.index(value)
    raise InvalidParameterError("resize_mode", f"unknown mode {value!r}; valid: {', '.join(RESIZE_MODES)}")


# ---- infotext → form ----------------------------------------------------------------------------------
# (infotext key, field, converter) in A1111's paste-field order. Size keys come split as Key-1 / Key-2.
_PASTE: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", int),
    ("CFG scale", "cfg_scale", float),
    ("Seed", "seed", int),
    ("Size-1", "width", int),
    ("Size-2", "height", int),
    ("Batch size", "batch_size", int),
    ("Variation seed", "subseed", int),
    ("Variation seed strength", "subseed_strength", float),
    ("Seed resize from-1", "seed_resize_from_w", int),
    ("Seed resize from-2", "seed_resize_from_h", int),
    ("Hires upscaler", "hr_upscaler", str),
    ("Hires steps", "hr_second_pass_steps", int),
    ("Hires upscale", "hr_scale", float),
    ("Hires resize-1", "hr_resize_x", int),
    ("Hires resize-2", "hr_resize_y", int),
    ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Refiner switch at", "refiner_switch_at", float),
)


def fields_from_infotext(parsed: dict[str, Any], samplers: list[str], schedules: list[str],
                         img2img: bool = False) -> dict[str, Any]:
    """Form values for one tab from `parse_infotext` output. Keys it cannot use are left out."""
    out: dict[str, Any] = {}
    for key, name, convert in _PASTE:
        if key in parsed:
            try:
                out[name] = convert(parsed[key])
            except (TypeError, ValueError):
                continue
    # parse_infotext fills "Hires resize-1" with 0 when absent, so only real hires values count.
    out["enable_hr"] = "Hires upscale" in parsed or str(parsed.get("Hires resize-1", "0")) not in ("0", "")
    if "Denoising strength" in parsed:
        key = "denoising_strength" if img2img else "hr_denoising_strength"
        try:
            out[key] = float(parsed["Denoising strength"])
        except (TypeError, ValueError):
            pass
    out.update(_sampler_fields(parsed, samplers, schedules))
    return out


def _sampler_fields(parsed: dict[str, Any], samplers: list[str], schedules: list[str]) -> dict[str, str]:
    """Handles old combined names such as "DPM++ 2M Karras" (sampler + schedule type in one)."""
    out: dict[str, str] = {}
    name = str(parsed.get("Sampler", ""))
    schedule = str(parsed.get("Schedule type", ""))
    by_lower = {s.lower(): s for s in samplers}
    if name.lower() in by_lower:
        out["sampler_name"] = by_lower[name.lower()]
    else:
        for label in schedules:
            base = name[: -len(label) - 1]
            if name.lower().endswith(" " + label.lower()) and base.lower() in by_lower:
                out["sampler_name"], schedule = by_lower[base.lower()], label
                break
    labels = {s.lower(): s for s in schedules}
    if schedule.lower() in labels:
        out["scheduler"] = labels[schedule.lower()]
    return out


def clip_skip_from_infotext(parsed: dict[str, Any]) -> int | None:
    try:
        return int(parsed.get("Clip skip", 1))
    except (TypeError, ValueError):
        return None
