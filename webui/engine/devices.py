"""Device and precision choice, in one place."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    dtype: torch.dtype          # UNet and text encoders
    vae_dtype: torch.dtype

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA if present, otherwise MPS, otherwise CPU; an explicit request wins."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_config(requested: str | None = None, no_half: bool = False, no_half_vae: bool = False) -> DeviceConfig:
    """fp16 on CUDA (and MPS); fp32 on CPU until a measured bf16 path exists."""
    device = pick_device(requested)
    half = device.type in ("cuda", "mps") and not no_half
    dtype = torch.float16 if half else torch.float32
    vae_dtype = torch.float16 if half and not no_half_vae else torch.float32
    return DeviceConfig(device=device, dtype=dtype, vae_dtype=vae_dtype)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
