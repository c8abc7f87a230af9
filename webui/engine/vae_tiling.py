"""Tiled VAE encode and decode: large images in overlapping tiles, blended, so peak memory follows the tile.

The VAE's encoder and decoder are fully convolutional except for GroupNorm statistics and the mid-block
attention, which a tile computes over itself only. Tiled output is therefore close to, not equal to, the
untiled one; overlapping tiles blended with linear ramps hide the seams. The measured bound is in
docs/performance.md and tests/test_vae_tiling.py.

The tiling wraps `vae.encoder.forward` and `vae.decoder.forward`, so every encode/decode in the app (txt2img,
img2img, hires, inpaint conditioning) follows the engine's `devices.vae_tiling` options, read at each call.
The VAE's 1×1 quant convs run outside the wrapper: being pointwise, they need no tiling.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

TILING_MODES = ("auto", "always", "never")
DEFAULT_THRESHOLD = 2048 * 2048   # pixels; below this an SD/SDXL decode fits comfortably without tiles
_MARK = "_studio_tiling"


@dataclass
class VaeTiling:
    mode: str = "auto"                  # "auto": tile above `threshold` pixels; "always"; "never"
    threshold: int = DEFAULT_THRESHOLD  # image pixels (width × height)
    tile: int = 512                     # tile side in image pixels
    overlap: int = 128                  # overlap of neighbouring tiles in image pixels

    def __post_init__(self) -> None:
        if self.mode not in TILING_MODES:
            raise ValueError(f"unknown VAE tiling mode {self.mode!r}; valid: {', '.join(TILING_MODES)}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"tile overlap {self.overlap} must be in [0, tile={self.tile})")

    def wants(self, pixels: int) -> bool:
        return self.mode == "always" or (self.mode == "auto" and pixels > self.threshold)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def _ramp(n: int, ramp: int, lead: bool, trail: bool) -> torch.Tensor:
    """1 inside, falling linearly towards an edge that borders another tile."""
    w = torch.ones(n)
    ramp = min(ramp, n)
    if ramp > 0:
        r = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if lead:
            w[:ramp] = torch.minimum(w[:ramp], r)
        if trail:
            w[-ramp:] = torch.minimum(w[-ramp:], r.flip(0))
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
          scale: float, align: int = 1) -> torch.Tensor:
    """Apply `fn` ([N,C,h,w] → [N,C',h·scale,w·scale]) to overlapping `tile`² tiles of x and blend them.

    `tile`/`overlap` are in x's units; tile starts are multiples of `align` (the encoder's downsampling)."""
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    stride = max(align, (tile - overlap) // align * align)
    ramp = max(1, int(overlap * scale))
    out = total = None
    for y in _starts(h, th, stride):
        wy = _ramp(int(th * scale), ramp, y > 0, y + th < h)
        for x0 in _starts(w, tw, stride):
            piece = fn(x[..., y:y + th, x0:x0 + tw]).float()
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], int(h * scale), int(w * scale))
                total = piece.new_zeros(1, 1, *out.shape[-2:])
            wx = _ramp(int(tw * scale), ramp, x0 > 0, x0 + tw < w)
            weight = (wy[:, None] * wx[None, :]).to(piece.device)
            oy, ox = int(y * scale), int(x0 * scale)
            out[..., oy:oy + piece.shape[-2], ox:ox + piece.shape[-1]] += piece * weight
            total[..., oy:oy + piece.shape[-2], ox:ox + piece.shape[-1]] += weight
    return out / total


class _SharedNorms:
    """GroupNorm over the whole image while it is processed in tiles (two passes).

    A tile's own GroupNorm statistics differ from the image's, which shows as tile-to-tile shifts. The
    first pass runs the tiles with their own statistics and accumulates, per norm layer, the sums over all
    tiles; the second pass normalises every tile with those image-wide statistics."""

    def __init__(self, part: torch.nn.Module):
        self.norms = [m for m in part.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.stats: dict[int, list[torch.Tensor]] = {}
        self.phase = "record"
        self.core = (0.0, 1.0, 0.0, 1.0)   # the part of the current tile no other tile counts (fractions)

    def _record(self, norm: torch.nn.GroupNorm, x: torch.Tensor) -> None:
        if x.ndim != 4:
            return   # the attention's norm sees a token sequence; it keeps per-tile statistics
        h, w = x.shape[-2:]
        y0, y1, x0, x1 = self.core
        own = x[..., round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)]
        grouped = own.double().reshape(own.shape[0], norm.num_groups, -1, *own.shape[-2:]).flatten(2)
        acc = self.stats.setdefault(id(norm), [0.0, 0.0, 0])
        acc[0] = acc[0] + grouped.sum(-1)
        acc[1] = acc[1] + (grouped ** 2).sum(-1)
        acc[2] += grouped.shape[-1]

    def _forward(self, norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        n, g = x.shape[0], norm.num_groups
        grouped = x.float().reshape(n, g, -1)
        if self.phase == "record" or id(norm) not in self.stats:
            if self.phase == "record":
                self._record(norm, x)
            return torch.nn.functional.group_norm(x, g, norm.weight, norm.bias, norm.eps)
        total, squares, count = self.stats[id(norm)]
        mean = total / count
        var = (squares / count - mean ** 2).clamp_min(0)
        normed = (grouped - mean.float()[..., None]) * torch.rsqrt(var.float()[..., None] + norm.eps)
        out = normed.reshape(x.shape)
        if norm.affine:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            out = out * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
        return out.to(x.dtype)

    def __enter__(self) -> "_SharedNorms":
        for norm in self.norms:
            norm.forward = functools.partial(self._forward, norm)
        return self

    def __exit__(self, *exc) -> None:
        for norm in self.norms:
            del norm.forward


def tiled_shared_norms(part: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       tile: int, overlap: int, scale: float, align: int = 1) -> torch.Tensor:
    """`tiled`, with GroupNorm statistics shared across the tiles (twice the compute of one tiled pass)."""
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    stride = max(align, (tile - overlap) // align * align)
    with _SharedNorms(part) as norms:
        if not norms.norms:
            return tiled(fn, x, tile, overlap, scale, align)
        for y, (cy0, cy1) in zip(_starts(h, th, stride), _cores(h, th, stride)):
            for x0, (cx0, cx1) in zip(_starts(w, tw, stride), _cores(w, tw, stride)):
                norms.core = (cy0 / th, cy1 / th, cx0 / tw, cx1 / tw)
                fn(x[..., y:y + th, x0:x0 + tw])
        norms.phase = "apply"
        return tiled(fn, x, tile, overlap, scale, align)


def _cores(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Per tile, the range (relative to its start) it owns: overlaps are split at their middle."""
    starts = _starts(length, tile, stride)
    cuts = [0] + [(nxt + cur + tile) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]
    return [(cuts[i] - s, cuts[i + 1] - s) for i, s in enumerate(starts)]


def latent_scale(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _wrap(part: torch.nn.Module, options: Callable[[], VaeTiling], scale: int, decode: bool) -> None:
    inner = part.forward

    @functools.wraps(inner)
    def forward(sample: torch.Tensor, *args, **kwargs):
        opts = options()
        h, w = sample.shape[-2:]
        pixels = h * w * (scale * scale if decode else 1)
        unit = scale if decode else 1          # image pixels per input unit
        tile, overlap = opts.tile // unit, opts.overlap // unit
        if args or kwargs or not opts.wants(pixels) or (h <= tile and w <= tile):
            return inner(sample, *args, **kwargs)
        out = tiled_shared_norms(part, inner, sample, tile, overlap, scale if decode else 1 / scale,
                                 align=1 if decode else scale)
        return out.to(sample.dtype)

    part.forward = forward


def install(vae, options: Callable[[], VaeTiling]) -> None:
    """Tile this VAE's encoder and decoder per `options()` (read at each call). Idempotent."""
    if getattr(vae, _MARK, False):
        return
    setattr(vae, _MARK, True)
    scale = latent_scale(vae)
    _wrap(vae.decoder, options, scale, decode=True)
    _wrap(vae.encoder, options, scale, decode=False)
