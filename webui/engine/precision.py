"""Compute precision of the UNet and VAE, chosen per call so that switching it never reloads weights.

Weights keep the dtype they were loaded in (devices.py: fp32 on CPU, fp16 on GPU by default). When they are
fp32 and the engine's precision asks for bf16 or fp16, the UNet's and the VAE encoder's/decoder's forward run
under `torch.autocast`, and their tensor outputs are cast back to the weights' dtype so the code around them
(sampler math, CFG, blending, the VAE's 1×1 quant convs) stays in fp32.

"auto": on CPU, bf16 where the CPU has native bf16 (AMX / AVX512-BF16, see devices.cpu_bf16_support), else
fp32 — emulated bf16 is far slower than fp32; on GPU, whatever dtype the weights were loaded in.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .devices import PRECISIONS, DeviceConfig

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {v: k for k, v in DTYPES.items()}
_POLICY = "_studio_precision"   # attribute naming the DeviceConfig a wrapped module reads


def effective(devices: DeviceConfig) -> str:
    """The precision the UNet/VAE compute in: "fp32", "bf16" or "fp16" ("auto" resolved)."""
    p = devices.precision
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {p!r}; valid: {', '.join(PRECISIONS)}")
    if p != "auto":
        return p
    if devices.device.type == "cpu":
        return "bf16" if devices.cpu_bf16 else "fp32"
    return _NAMES.get(devices.dtype, "fp32")


def autocast_dtype(devices: DeviceConfig, weight_dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype for a module with weights of `weight_dtype`, or None (run as loaded)."""
    target = DTYPES[effective(devices)]
    if weight_dtype != torch.float32 or target == torch.float32:
        return None   # reduced weights (GPU fp16/bf16 load) already compute in their dtype
    return target


def _weight_dtype(module: torch.nn.Module) -> torch.dtype:
    param = next(module.parameters(), None)
    return param.dtype if param is not None else torch.float32


def _cast_back(out: Any, dtype: torch.dtype) -> Any:
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != dtype:
        return out.to(dtype)
    return out


def install(module: torch.nn.Module, devices: DeviceConfig, cast_output: bool = True) -> None:
    """Make `module.forward` follow `devices.precision` at every call. Idempotent."""
    if getattr(module, _POLICY, None) is devices:
        return
    setattr(module, _POLICY, devices)
    inner: Callable = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        weights = _weight_dtype(module)
        dtype = autocast_dtype(devices, weights)
        if dtype is None:
            return inner(*args, **kwargs)
        device_type = next(module.parameters()).device.type
        with torch.autocast(device_type, dtype=dtype):
            out = inner(*args, **kwargs)
        return _cast_back(out, weights) if cast_output else out

    module.forward = forward


def install_model(unet: torch.nn.Module, vaes: list, devices: DeviceConfig) -> None:
    """The UNet (its output's `.sample` is cast by the denoiser) and each VAE's encoder and decoder."""
    install(unet, devices, cast_output=False)
    for vae in vaes:
        setattr(vae, _POLICY, devices)
        for part in ("encoder", "decoder"):
            if hasattr(vae, part):
                install(getattr(vae, part), devices)


def is_reduced(module: torch.nn.Module) -> bool:
    """Whether `module` (e.g. a VAE) currently computes below fp32: reduced weights or autocast."""
    weights = _weight_dtype(module)
    if weights != torch.float32:
        return True
    devices = getattr(module, _POLICY, None)
    return devices is not None and autocast_dtype(devices, weights) is not None


@contextmanager
def full_precision(module: torch.nn.Module) -> Iterator[None]:
    """Run `module` in fp32 for the duration (the NaN retry): weights upcast and autocast off."""
    original = _weight_dtype(module)
    devices = getattr(module, _POLICY, None)
    saved = devices.precision if devices is not None else None
    if devices is not None:
        devices.precision = "fp32"
    module.to(torch.float32)
    try:
        yield
    finally:
        module.to(original)
        if devices is not None:
            devices.precision = saved


def set_precision(devices: DeviceConfig, value: str) -> None:
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)}")
    devices.precision = value


def describe(devices: DeviceConfig) -> str:
    """For logs: what was asked and what runs, e.g. "auto → fp32 (no native bf16 on this CPU)"."""
    eff = effective(devices)
    why = ""
    if devices.precision == "auto" and devices.device.type == "cpu":
        why = " (native bf16 on this CPU)" if devices.cpu_bf16 else " (no native bf16 on this CPU)"
    return f"{devices.precision} → {eff}{why}"


def compile_module(module: torch.nn.Module, backend: str | Callable = "inductor") -> None:
    """torch.compile `module.forward`; if compiling fails (no compiler, unsupported op), warn once and run
    uncompiled from then on. Compilation happens at the first call, so that is where failures show."""
    inner = module.forward
    compiled = torch.compile(inner, backend=backend)
    state = {"fn": compiled}

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        fn = state["fn"]
        if fn is inner:
            return inner(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:   # any compiler failure; a real model error repeats below, uncompiled
            log.warning("torch.compile of %s failed, running it uncompiled: %s: %s", type(module).__name__,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            state["fn"] = inner
            return inner(*args, **kwargs)

    module.forward = forward
