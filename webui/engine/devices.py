"""Device and precision choice, in one place."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .vae_tiling import VaeTiling

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_MODES = ("normal", "medvram", "lowvram")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # native bf16 matmul; without them bf16 is emulated and slow


@dataclass
class DeviceConfig:
    """Where and how the models run. `dtype`/`vae_dtype` and the load-time options are fixed when a model is
    loaded; `precision` and `vae_tiling` are read at every UNet/VAE call, so changing them needs no reload."""
    device: torch.device
    dtype: torch.dtype          # UNet and text encoders, as loaded
    vae_dtype: torch.dtype
    precision: str = "auto"     # one of PRECISIONS; see precision.py
    cpu_bf16: bool = False      # this CPU has native bf16 (what "auto" decides on)
    memory_mode: str = "normal"   # one of MEMORY_MODES; see memory_modes.py
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = False   # UNet weights in channels_last memory format (applied at load)
    compile: bool = False         # torch.compile the UNet (applied at load)
    vae_tiling: VaeTiling = field(default_factory=VaeTiling)

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


def cpu_bf16_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU has AMX-BF16 or AVX512-BF16 (from the kernel's CPU flags; False where unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def device_config(requested: str | None = None, no_half: bool = False, no_half_vae: bool = False,
                  precision: str = "auto", memory_mode: str = "normal", channels_last: bool = False,
                  compile: bool = False, vae_tiling: VaeTiling | None = None) -> DeviceConfig:
    """On CUDA/MPS the weights load in fp16 (bf16 with precision "bf16"; fp32 with "fp32" or --no-half).
    On CPU the weights stay fp32 and a reduced `precision` is applied by autocast (precision.py)."""
    check_choice("precision", precision, PRECISIONS)
    check_choice("memory mode", memory_mode, MEMORY_MODES)
    device = pick_device(requested)
    half = device.type in ("cuda", "mps") and not no_half and precision != "fp32"
    reduced = torch.bfloat16 if precision == "bf16" else torch.float16
    dtype = reduced if half else torch.float32
    vae_dtype = reduced if half and not no_half_vae else torch.float32
    return DeviceConfig(device=device, dtype=dtype, vae_dtype=vae_dtype, precision=precision,
                        cpu_bf16=device.type == "cpu" and cpu_bf16_support(), memory_mode=memory_mode,
                        channels_last=channels_last, compile=compile, vae_tiling=vae_tiling or VaeTiling())


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
