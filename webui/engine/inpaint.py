"""Inpainting in pixel and latent space: masks, "only masked" crops, masked-content fills, blending, composite.

Everything here works on PIL images and tensors; the VAE and the sampler are driven by `job_plan.py`.
Mask convention: white (255) = change, black (0) = keep, as in A1111.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from . import image_ops
from .errors import InvalidParameterError

if TYPE_CHECKING:
    from .params import GenerationParams

FILL_MODES = ("fill", "original", "latent noise", "latent nothing")   # A1111 inpainting_fill 0..3
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
# Gaussian sigmas of the "fill" mode, coarse to fine: each finer pass overwrites where it has support.
_FILL_SIGMAS = (256, 64, 16, 4, 2, 1)


# ---- masks ---------------------------------------------------------------------------------------

def binary_mask(mask: Image.Image, round_alpha: bool = True) -> Image.Image:
    """An 'L' mask from an uploaded or drawn one. A mask with transparency uses its alpha (opaque = change),
    which is how brush strokes arrive from the browser; anything else is read as grey levels."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask.convert("L")


def mask_from_transparency(image: Image.Image) -> Image.Image | None:
    """The transparent part of an image as a mask (transparent = change), or None if it is fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        return None
    return alpha.point(lambda v: 255 if v < 128 else 0)


def effective_mask(mask: Image.Image, invert: bool, round_alpha: bool = True) -> Image.Image:
    m = binary_mask(mask, round_alpha)
    return ImageOps.invert(m) if invert else m


def check_mask(mask, image_sizes: list[tuple[int, int]], invert: bool, round_alpha: bool = True) -> None:
    """Refuse masks that cannot be used, naming what is wrong."""
    if not isinstance(mask, Image.Image):
        raise InvalidParameterError("mask", "must be an image (white = change, black = keep)")
    for w, h in image_sizes:
        if mask.size != (w, h):
            raise InvalidParameterError("mask", f"is {mask.width}x{mask.height} but the image is {w}x{h}; "
                                                "the mask must have the same size as the image")
    if effective_mask(mask, invert, round_alpha).getbbox() is None:
        if invert:
            raise InvalidParameterError("mask", "covers the whole image, so 'Inpaint not masked' has nothing to change")
        raise InvalidParameterError("mask", "is empty: paint the area to change (white = change, black = keep)")


def _kernel(sigma: int) -> int:
    return 2 * int(2.5 * sigma + 0.5) + 1     # A1111's kernel size for a mask blur of `sigma`


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    arr = np.asarray(mask.convert("L"))
    if blur_x > 0:
        arr = cv2.GaussianBlur(arr, (_kernel(blur_x), 1), blur_x)
    if blur_y > 0:
        arr = cv2.GaussianBlur(arr, (1, _kernel(blur_y)), 0, sigmaY=blur_y)
    return Image.fromarray(arr)


def _resize_mask(mode: int, mask: Image.Image, width: int, height: int) -> Image.Image:
    return image_ops.resize_image(mode, mask, width, height).convert("L")


# ---- "only masked": the box that is processed at full resolution ---------------------------------

Box = tuple[int, int, int, int]   # x1, y1, x2, y2 (x2/y2 exclusive)


def mask_box(mask: Image.Image, padding: int) -> Box | None:
    """The bounding box of the mask's non-zero pixels, grown by `padding` and clipped to the image."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    x1, y1, x2, y2 = bbox
    return max(0, x1 - padding), max(0, y1 - padding), min(mask.width, x2 + padding), min(mask.height, y2 + padding)


def _grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to `size` around its centre, shifted to stay inside [0, limit)."""
    size = min(size, limit)
    lo = max(0, min(lo - (size - (hi - lo)) // 2, limit - size))
    return lo, lo + size


def fit_box_to_aspect(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """Grow the box to the processing size's aspect ratio (as far as the image allows), so the crop is not
    distorted when it is resized to width × height."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if bw * height < bh * width:
        x1, x2 = _grow(x1, x2, round(bh * width / height), image_w)
    elif bw * height > bh * width:
        y1, y2 = _grow(y1, y2, round(bw * height / width), image_h)
    return x1, y1, x2, y2


# ---- masked content ------------------------------------------------------------------------------

def _blur_support(values: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of `sigma` pixels; large sigmas are done on a downscaled copy to stay cheap."""
    h, w = values.shape[:2]
    scale = max(1.0, sigma / 4)
    sw, sh = max(1, round(w / scale)), max(1, round(h / scale))
    small = cv2.resize(values, (sw, sh), interpolation=cv2.INTER_AREA) if scale > 1 else values
    small = cv2.GaussianBlur(small, (0, 0), sigma / scale)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if scale > 1 else small


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """'fill': replace the masked area by the blurred colours around it (normalised convolution)."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = 1.0 - np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if keep.sum() < 1e-3:
        return Image.new("RGB", image.size, (127, 127, 127))
    filled = np.broadcast_to((img * keep[..., None]).sum((0, 1)) / keep.sum(), img.shape).copy()
    for sigma in _FILL_SIGMAS:
        num = _blur_support(img * keep[..., None], sigma)
        den = _blur_support(keep, sigma)
        ok = den > 1e-2
        filled[ok] = num[ok] / den[ok][:, None]
    out = img * keep[..., None] + filled * (1.0 - keep[..., None])
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


def latent_mask(mask: Image.Image, height: int, width: int, round_mask: bool, like: torch.Tensor) -> torch.Tensor:
    """The mask at latent size, [1, 1, h, w] in [0, 1] (1 = change), optionally rounded to 0/1."""
    small = np.asarray(mask.convert("L").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    if round_mask:
        small = np.round(small)
    return torch.from_numpy(small)[None, None].to(like.device, like.dtype)


def start_latent(init_latent: torch.Tensor, noise: torch.Tensor, nmask: torch.Tensor, fill: int) -> torch.Tensor:
    """The latent sampling starts from: 'latent noise' puts noise, 'latent nothing' zeros, in the mask."""
    if fill == LATENT_NOISE:
        return init_latent * (1 - nmask) + noise * nmask
    if fill == LATENT_NOTHING:
        return init_latent * (1 - nmask)
    return init_latent


class MaskBlend:
    """Wraps a denoiser for regular (4-channel) models: outside the mask, the UNet sees the original latent
    noised to the current sigma, and the prediction is the original latent, at every step."""

    def __init__(self, denoiser: Callable, init_latent: torch.Tensor, noise: torch.Tensor, nmask: torch.Tensor):
        self.denoiser, self.init, self.noise, self.nmask = denoiser, init_latent, noise, nmask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        keep = 1 - self.nmask
        x = x * self.nmask + (self.init + self.noise * s) * keep
        return self.denoiser(x, sigma, **kwargs) * self.nmask + self.init * keep


# ---- preparing a job, and the final composite ----------------------------------------------------

@dataclass
class InpaintPrep:
    images: list[Image.Image]      # what the VAE encodes, width × height (cropped and filled as asked)
    originals: list[Image.Image]   # the pictures the result is composited onto, at the output size
    mask: Image.Image              # the processing mask at width × height (blurred)
    overlay: Image.Image           # the composite mask at the output size
    box: Box | None                # "only masked": where the result goes back in the original
    fill: int
    round_mask: bool

    def original(self, i: int) -> Image.Image:
        return self.originals[i] if len(self.originals) > 1 else self.originals[0]


def prepare(p: "GenerationParams") -> InpaintPrep:
    mask = effective_mask(p.mask, bool(p.inpainting_mask_invert), p.mask_round)
    mask = blur_mask(mask, p.mask_blur_x, p.mask_blur_y)
    originals = [im.convert("RGB") for im in p.init_images]
    box = None
    if p.inpaint_full_res:
        box = mask_box(mask, p.inpaint_full_res_padding)
        box = fit_box_to_aspect(box, p.width, p.height, mask.width, mask.height)
        overlay = mask
        proc_mask = _resize_mask(2, mask.crop(box), p.width, p.height)
        images = [image_ops.resize_image(2, im.crop(box), p.width, p.height) for im in originals]
    else:
        proc_mask = _resize_mask(p.resize_mode, mask, p.width, p.height)
        # doubled, as A1111 does, so a blurred edge leans towards the new pixels
        overlay = proc_mask.point(lambda v: min(255, v * 2))
        originals = [image_ops.resize_image(p.resize_mode, im, p.width, p.height) for im in originals]
        images = list(originals)
    if p.inpainting_fill != ORIGINAL:
        images = [fill_masked(im, proc_mask) for im in images]
    return InpaintPrep(images, originals, proc_mask, overlay, box, p.inpainting_fill, p.mask_round)


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """generated · m + original · (1 − m): where the mask is 0 the original pixel comes back exactly."""
    m = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    orig = np.asarray(original.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.clip((gen * m + orig * (1.0 - m)).round(), 0, 255).astype(np.uint8))


def finish(prep: InpaintPrep, generated: Image.Image, index: int) -> Image.Image:
    original = prep.original(index)
    if prep.box is not None:
        x1, y1, x2, y2 = prep.box
        pasted = original.copy()
        pasted.paste(image_ops.resize_image(1, generated, x2 - x1, y2 - y1), (x1, y1))
        generated = pasted
    return composite(generated, original, prep.overlay)
