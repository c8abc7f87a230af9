"""Form values of the Inpaint, Outpaint and Depth tabs → `GenerationParams` (no Gradio here, so it is testable).

The tabs share the compact parameter set of `EDIT_FIELDS`; each adds its own inputs. Refusals name the field
as `InvalidParameterError`, and the tab shows the message.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageChops

from ..engine import inpaint, outpaint
from ..engine.errors import InvalidParameterError
from ..engine.params import RESIZE_MODES, GenerationParams
from .fields import _whole

EDIT_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "n_iter",
               "batch_size", "seed", "denoising_strength")
SIZE_FIELDS = ("width", "height")
INPAINT_FIELDS = ("editor", "mask_upload", "mask_blur", "mask_mode", "inpainting_fill", "inpaint_area",
                  "inpaint_padding", "resize_mode")
OUTPAINT_FIELDS = ("image", "pixels", "directions", "mask_blur", "inpainting_fill")
DEPTH_FIELDS = ("image", "depth_map", "resize_mode")
_INT = {"steps", "n_iter", "batch_size", "seed", "width", "height", "mask_blur", "inpaint_padding", "pixels"}


def base_params(values: dict[str, Any], clip_skip: Any) -> GenerationParams:
    kw = {name: values[name] for name in EDIT_FIELDS + SIZE_FIELDS if name in values}
    for name in _INT & set(kw):
        kw[name] = _whole(name, kw[name])
    kw["cfg_scale"] = float(kw["cfg_scale"])
    kw["denoising_strength"] = float(kw["denoising_strength"])
    return GenerationParams(**kw, clip_skip=_whole("clip_skip", clip_skip))


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> int:
    if value not in choices:
        raise InvalidParameterError(name, f"unknown choice {value!r}; valid: {', '.join(choices)}")
    return choices.index(value)


# ---- inpaint ------------------------------------------------------------------------------------------

def editor_parts(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, painted mask) from an ImageEditor value; strokes of every layer count, by their alpha."""
    if not value:
        return None, None
    if isinstance(value, Image.Image):
        return value, None
    background = value.get("background")
    mask = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        stroke = inpaint.binary_mask(layer)
        if stroke.getbbox() is not None:
            mask = stroke if mask is None else ImageChops.lighter(mask, stroke)
    return background, mask


def inpaint_params(values: dict[str, Any], clip_skip: Any) -> GenerationParams:
    image, painted = editor_parts(values.get("editor"))
    if image is None:
        raise InvalidParameterError("image", "drop a picture into the Inpaint box first")
    mask = painted or values.get("mask_upload") or inpaint.mask_from_transparency(image)
    if mask is None:
        raise InvalidParameterError("mask", "paint over the area to change, or upload a mask (white = change)")
    p = base_params(values, clip_skip)
    p.init_images = [image.convert("RGB")]
    p.mask = mask
    p.mask_blur_x = p.mask_blur_y = _whole("mask_blur", values["mask_blur"])
    p.inpainting_mask_invert = _choice("mask_mode", values["mask_mode"], inpaint.MASK_MODES) == 1
    p.inpainting_fill = _choice("inpainting_fill", values["inpainting_fill"], inpaint.FILL_MODES)
    p.inpaint_full_res = _choice("inpaint_area", values["inpaint_area"], inpaint.INPAINT_AREAS) == 1
    p.inpaint_full_res_padding = _whole("inpaint_padding", values["inpaint_padding"])
    p.resize_mode = _choice("resize_mode", values.get("resize_mode", RESIZE_MODES[0]), RESIZE_MODES)
    return p


# ---- outpaint -----------------------------------------------------------------------------------------

def outpaint_params(values: dict[str, Any], clip_skip: Any) -> GenerationParams:
    image = values.get("image")
    if image is None:
        raise InvalidParameterError("image", "drop a picture into the Outpaint box first")
    base = base_params(values, clip_skip)
    fill = _choice("inpainting_fill", values["inpainting_fill"], inpaint.FILL_MODES)
    pixels, blur = _whole("pixels", values["pixels"]), _whole("mask_blur", values["mask_blur"])
    return outpaint.outpaint_params(base, image.convert("RGB"), pixels, list(values.get("directions") or []), blur, fill)


# ---- depth --------------------------------------------------------------------------------------------

def depth_params(values: dict[str, Any], clip_skip: Any) -> GenerationParams:
    image = values.get("image")
    if image is None:
        raise InvalidParameterError("image", "drop a picture into the Depth box first")
    p = base_params(values, clip_skip)
    p.init_images = [image.convert("RGB")]
    p.depth_map = values.get("depth_map")
    p.resize_mode = _choice("resize_mode", values.get("resize_mode", RESIZE_MODES[0]), RESIZE_MODES)
    return p


def depth_status(is_depth_model: bool, model_label: str, estimator: str | None, depth_dir: str) -> tuple[str, str]:
    """(message, kind) for the Depth tab: can this checkpoint do depth2img, and how is depth obtained?"""
    if not is_depth_model:
        return (f"The loaded checkpoint is {model_label}, not a depth model. Load an SD 2 depth checkpoint "
                "(512-depth-ema) to use this tab.", "error")
    if estimator is None:
        return ("No depth estimator is available, so upload a depth map (white = near). To estimate depth, put a "
                f"transformers DPT depth model (a folder with config.json) in {depth_dir}.", "warning")
    return f"Depth is estimated with {estimator} unless you upload a depth map.", "info"
