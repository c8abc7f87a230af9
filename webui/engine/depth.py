"""Depth maps for SD2-depth checkpoints (5-channel UNet input: the latent plus one depth channel).

A depth map comes from, in this order: the user's upload; a transformers `DPTForDepthEstimation` saved in a
folder of `models/depth`; the MiDaS weights (`depth_model.*`) embedded in the checkpoint itself. It is
resized to latent size (bicubic) and normalised to [-1, 1] per image, as SD2-depth was trained. When none of
these exists, generation stops with a message: a depth is never made up.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import EngineError

log = logging.getLogger(__name__)
DEPTH_CHANNELS = 1
_DEFAULT_PREPROCESS = {"size": 384, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class NoDepthEstimator(EngineError):
    pass


def is_depth_model(model) -> bool:
    return model.unet.config.in_channels - model.latent_channels == DEPTH_CHANNELS


def no_estimator_message(depth_dir: Path) -> str:
    return ("no depth estimator is available: upload a depth map (white = near), or put a transformers DPT "
            f"depth model (a folder with config.json and its weights) in {depth_dir}")


def image_to_depth(image: Image.Image) -> torch.Tensor:
    """An uploaded depth map (any mode; 16-bit PNGs keep their precision) as [1, 1, H, W] floats."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image.convert("F"), dtype=np.float32)
    else:
        arr = np.asarray(image.convert("L"), dtype=np.float32)
    return torch.from_numpy(arr.copy())[None, None]


def normalize(depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 1, H, W] (or [B, H, W]) depth → [B, 1, height, width] in [-1, 1]; a flat map becomes 0."""
    d = depth[:, None] if depth.ndim == 3 else depth
    d = F.interpolate(d.float(), size=(height, width), mode="bicubic", align_corners=False)
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    span = d.amax(dim=(1, 2, 3), keepdim=True) - lo
    return torch.where(span > 0, 2.0 * (d - lo) / span.clamp_min(1e-8) - 1.0, torch.zeros_like(d))


def to_image(depth: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """One normalised depth map ([1, h, w] or [h, w] in [-1, 1]) as a greyscale picture of `size` (white = near)."""
    arr = ((depth.float().squeeze().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, "L").resize(size, Image.Resampling.BICUBIC)


# ---- estimators -----------------------------------------------------------------------------------

@dataclass
class DepthEstimator:
    """A DPT depth model with its input size and normalisation. Returns relative inverse depth (near = high)."""
    name: str
    model: torch.nn.Module
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], device: torch.device) -> torch.Tensor:
        self.model.to(device)
        x = torch.stack([self._pixels(im) for im in images]).to(device)
        return self.model(pixel_values=x).predicted_depth.float().cpu()

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        arr = np.asarray(resized, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _preprocess_config(folder: Path, patch: int) -> dict:
    cfg = dict(_DEFAULT_PREPROCESS)
    path = folder / "preprocessor_config.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        size = raw.get("size", cfg["size"])
        cfg["size"] = int(size.get("height", cfg["size"]) if isinstance(size, dict) else size)
        cfg["mean"] = tuple(raw.get("image_mean", cfg["mean"]))
        cfg["std"] = tuple(raw.get("image_std", cfg["std"]))
    cfg["size"] = max(patch, cfg["size"] // patch * patch)
    return cfg


def load_folder_estimator(folder: Path) -> DepthEstimator:
    from transformers import DPTForDepthEstimation

    try:
        model = DPTForDepthEstimation.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EngineError(f"depth model {folder.name}: could not load it with transformers ({exc})") from None
    cfg = _preprocess_config(folder, int(model.config.patch_size))
    return DepthEstimator(folder.name, model.eval().requires_grad_(False), cfg["size"], cfg["mean"], cfg["std"])


class DepthEstimators:
    """Finds and caches depth estimators. Owned by the engine; nothing is loaded until a depth job needs it."""

    def __init__(self, depth_dir: Path, embedded_loader: Callable[[object], DepthEstimator | None] | None = None):
        self.depth_dir = Path(depth_dir)
        self.embedded_loader = embedded_loader
        self._cache: dict[str, DepthEstimator] = {}

    def folders(self) -> list[Path]:
        if not self.depth_dir.is_dir():
            return []
        return sorted(p for p in self.depth_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())

    def describe(self, model) -> str | None:
        """The estimator `get(model)` would use, by name, or None when there is none."""
        folders = self.folders()
        if folders:
            return folders[0].name
        if model is not None and model.extra.get("has_depth_model") and self.embedded_loader is not None:
            return f"{model.file.name} (embedded MiDaS)"
        return None

    def get(self, model) -> DepthEstimator:
        folders = self.folders()
        if folders:
            key = str(folders[0].resolve())
            if key not in self._cache:
                log.info("loading depth model %s", folders[0])
                self._cache[key] = load_folder_estimator(folders[0])
            return self._cache[key]
        if model.extra.get("has_depth_model") and self.embedded_loader is not None:
            key = f"embedded:{model.file.path.resolve()}"
            if key not in self._cache:
                estimator = self.embedded_loader(model)
                if estimator is not None:
                    self._cache[key] = estimator
            if key in self._cache:
                return self._cache[key]
        raise NoDepthEstimator(no_estimator_message(self.depth_dir))


def depth_conditioning(model, images: list[Image.Image], depth_map: Image.Image | None,
                       estimators: DepthEstimators | None, latent_hw: tuple[int, int], device) -> torch.Tensor:
    """The depth channel for a batch: [B, 1, h, w] in [-1, 1]. `images` are the init images at
    width × height; an uploaded `depth_map` is resized the same way by the caller."""
    h, w = latent_hw
    if depth_map is not None:
        return normalize(image_to_depth(depth_map), h, w).to(device)
    if estimators is None:
        raise NoDepthEstimator(no_estimator_message(Path("models/depth")))
    if not images:
        raise NoDepthEstimator("a depth model needs an init image to estimate depth from, or an uploaded depth map")
    estimator = estimators.get(model)
    return normalize(estimator(images, device), h, w).to(device)
