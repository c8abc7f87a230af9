"""Precision (issue #10): "auto" detection, bf16 autocast switched per call without a reload, the NaN retry,
channels_last and the torch.compile fallback."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import small_params
from webui.engine import precision
from webui.engine.devices import DeviceConfig, cpu_bf16_support, device_config
from webui.engine.engine import Engine
from webui.engine.paths import DataPaths
from webui.engine.processing import decode_latents


def _engine(checkpoints, tmp_path, **kw) -> Engine:
    checkpoints.path("sd1")
    engine = Engine(DataPaths.create(tmp_path, ckpt_dir=checkpoints.ckpt_dir), device="cpu", **kw)
    engine.load_checkpoint("sd1.safetensors")
    return engine


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def engine(checkpoints, tmp_path_factory):
    return _engine(checkpoints, tmp_path_factory.mktemp("precision"), precision="fp32")


# ---- detection and resolution -------------------------------------------------------------------

@pytest.mark.parametrize("flags, expected", [("fpu avx2 amx_bf16 amx_tile", True), ("avx512f avx512_bf16", True),
                                             ("fpu sse avx avx2 fma", False)])
def test_cpu_bf16_support_reads_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_bf16_support(info) is expected
    assert cpu_bf16_support(tmp_path / "missing") is False


def test_auto_is_bf16_only_on_cpus_with_native_bf16_and_keeps_fp16_on_gpu():
    cpu = torch.device("cpu")
    assert precision.effective(DeviceConfig(cpu, torch.float32, torch.float32, "auto", cpu_bf16=True)) == "bf16"
    assert precision.effective(DeviceConfig(cpu, torch.float32, torch.float32, "auto", cpu_bf16=False)) == "fp32"
    gpu = DeviceConfig(torch.device("cuda"), torch.float16, torch.float16, "auto")
    assert precision.effective(gpu) == "fp16"
    assert precision.autocast_dtype(gpu, torch.float16) is None      # fp16 weights run as loaded
    assert precision.autocast_dtype(DeviceConfig(cpu, torch.float32, torch.float32, "bf16"),
                                    torch.float32) == torch.bfloat16


def test_cpu_weights_stay_fp32_whatever_the_precision_and_bad_values_are_refused():
    for value in ("auto", "fp32", "bf16", "fp16"):
        cfg = device_config("cpu", precision=value)
        assert (cfg.dtype, cfg.vae_dtype, cfg.precision) == (torch.float32, torch.float32, value)
    with pytest.raises(ValueError, match="precision"):
        device_config("cpu", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        precision.set_precision(device_config("cpu"), "fp64")


# ---- generation -----------------------------------------------------------------------------------

def test_bf16_is_switched_per_call_without_reloading_and_leaves_infotext_alone(engine):
    model = engine.models.current
    pointers = [p.data_ptr() for p in model.unet.parameters()]
    seen = []
    handle = model.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        engine.set_precision("fp32")
        fp32 = engine.txt2img(small_params(steps=3))
        engine.set_precision("bf16")
        bf16 = engine.txt2img(small_params(steps=3))
        engine.set_precision("fp32")
        again = engine.txt2img(small_params(steps=3))
    finally:
        handle.remove()
        engine.set_precision("fp32")
    assert seen[:3] == [torch.float32] * 3 and seen[3:6] == [torch.bfloat16] * 3 and seen[-1] == torch.float32
    assert [p.data_ptr() for p in model.unet.parameters()] == pointers    # same weights, never reloaded
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())
    assert np.array_equal(_pixels(fp32), _pixels(again))                    # fp32 is exactly as before
    assert not np.array_equal(_pixels(fp32), _pixels(bf16))                 # bf16 really ran
    assert psnr(_pixels(fp32), _pixels(bf16)) > 30                          # fixture: about 44 dB
    assert fp32.infotexts == bf16.infotexts


def test_vae_runs_under_autocast_and_its_output_is_fp32(engine):
    model = engine.models.current
    seen = []
    handle = model.vae.decoder.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        engine.set_precision("bf16")
        out = decode_latents(model, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    finally:
        handle.remove()
        engine.set_precision("fp32")
    assert seen == [torch.bfloat16] and out.dtype == torch.float32 and out.shape == (1, 3, 64, 64)


def test_nan_under_autocast_is_redone_in_fp32(engine, caplog):
    """Inject NaNs into the decoder's output only while autocast is on: the retry must run without it."""
    model = engine.models.current
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = decode_latents(model, latents)

    def poison(module, inputs, output):
        return torch.full_like(output, float("nan")) if torch.is_autocast_enabled("cpu") else output

    handle = model.vae.decoder.conv_out.register_forward_hook(poison)
    engine.set_precision("bf16")
    try:
        with caplog.at_level("WARNING"):
            out = decode_latents(model, latents)
        assert engine.devices.precision == "bf16"          # restored after the retry
    finally:
        handle.remove()
        engine.set_precision("fp32")
    assert "redoing it in fp32" in caplog.text
    assert torch.isfinite(out).all() and torch.equal(out, expected)


def test_nan_in_fp32_is_an_error_not_a_retry(engine):
    from webui.engine.processing import NansError

    model = engine.models.current
    handle = model.vae.decoder.conv_out.register_forward_hook(lambda m, i, o: torch.full_like(o, float("nan")))
    try:
        with pytest.raises(NansError, match="even in fp32"):
            decode_latents(model, torch.zeros(1, 4, 8, 8))
    finally:
        handle.remove()


# ---- load-time options ------------------------------------------------------------------------------

def test_channels_last_unet_gives_the_same_image(engine, checkpoints, tmp_path):
    other = _engine(checkpoints, tmp_path, precision="fp32", channels_last=True)
    conv = other.models.current.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = _pixels(engine.txt2img(small_params(steps=3))), _pixels(other.txt2img(small_params(steps=3)))
    assert np.abs(a - b).max() <= 1      # same maths, other summation order


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()


def test_compile_failure_falls_back_to_eager_with_a_warning(caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    module, x = _Tiny().eval(), torch.randn(1, 3, 8, 8)
    expected = module(x)
    precision.compile_module(module, backend=broken_backend)
    with caplog.at_level(logging.WARNING):
        out = module(x)
        again = module(x)
    assert torch.equal(out, expected) and torch.equal(again, expected)
    assert caplog.text.count("torch.compile of _Tiny failed") == 1


def test_compile_with_a_working_backend_keeps_the_output():
    module, x = _Tiny().eval(), torch.randn(1, 3, 8, 8)
    expected = module(x)
    precision.compile_module(module, backend="eager")
    assert torch.allclose(module(x), expected)
