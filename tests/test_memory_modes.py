"""Memory modes (issue #10): medvram / lowvram give the same images as the normal mode, and move the right
modules in and out, in order. On this CPU-only machine the compute and offload devices are both the CPU, so
the moves are recorded by a spy mover (which still does the real `.to()`), the one stand-in these tests use."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_params
from webui.engine.engine import Engine
from webui.engine.memory_modes import use_sdpa
from webui.engine.paths import DataPaths


def _engine(checkpoints, root, **kw) -> Engine:
    checkpoints.path("sd1")
    engine = Engine(DataPaths.create(root, ckpt_dir=checkpoints.ckpt_dir), device="cpu", precision="fp32", **kw)
    engine.load_checkpoint("sd1.safetensors")
    return engine


@pytest.fixture(scope="module")
def engines(checkpoints, tmp_path_factory):
    return {mode: _engine(checkpoints, tmp_path_factory.mktemp(mode), memory_mode=mode)
            for mode in ("normal", "medvram", "lowvram")}


def _images(result) -> list[np.ndarray]:
    return [np.asarray(im) for im in result.images]


def _init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_give_the_same_images(engines, mode):
    p = dict(steps=3, batch_size=2)
    normal, other = engines["normal"], engines[mode]
    assert [np.array_equal(a, b) for a, b in zip(_images(normal.txt2img(small_params(**p))),
                                                   _images(other.txt2img(small_params(**p))))] == [True, True]
    i2i = dict(p, init_images=[_init_image()], denoising_strength=0.6, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(_images(normal.img2img(small_params(**i2i))),
                                                     _images(other.img2img(small_params(**i2i)))))


class _Spy:
    """Records (label, 'in'/'out') for every move the offloader makes, and does the move."""

    def __init__(self, engine: Engine):
        self.offloader = engine.models.offloader
        model = engine.models.current
        self.labels = {id(e.model): "text" for e in model.prompt_encoder.encoders}
        self.labels[id(model.vae)] = "vae"
        self.labels[id(model.unet)] = "unet"
        for name, child in model.unet.named_children():
            if name in ("down_blocks", "up_blocks"):
                self.labels.update({id(b): f"{name}.{i}" for i, b in enumerate(child)})
            else:
                self.labels[id(child)] = "unet." + name
        self.events: list[tuple[str, str]] = []

    def __call__(self, module, device):
        direction = "in" if device is self.offloader.compute else "out" if device is self.offloader.offload else "?"
        self.events.append((self.labels.get(id(module), type(module).__name__), direction))
        module.to(device)


def _spy(engine: Engine) -> _Spy:
    spy = _Spy(engine)
    engine.models.offloader.mover = spy
    return spy


def test_medvram_moves_whole_components_one_at_a_time(engines):
    engine = engines["medvram"]
    spy = _spy(engine)
    try:
        engine.txt2img(small_params(steps=3))
        first = list(spy.events)
        spy.events.clear()
        engine.txt2img(small_params(steps=3))
    finally:
        engine.models.offloader.mover = lambda m, d: m.to(d)
    # the VAE stays in from the previous job's decode until the text encoder is needed; steps move nothing
    assert first[-5:] == [("text", "in"), ("text", "out"), ("unet", "in"), ("unet", "out"), ("vae", "in")]
    assert spy.events == [("vae", "out"), ("text", "in"), ("text", "out"), ("unet", "in"), ("unet", "out"),
                          ("vae", "in")]


def test_lowvram_runs_each_unet_block_alone(engines):
    engine = engines["lowvram"]
    model = engine.models.current
    spy = _spy(engine)
    block_labels = {label for label in spy.labels.values() if "_blocks." in label} | {"unet.mid_block"}
    resident: set[str] = set()
    checks: list[tuple[str, set[str]]] = []

    def mover(module, device):
        spy(module, device)
        label, direction = spy.events[-1]
        (resident.add if direction == "in" else resident.discard)(label)

    def watch(label):
        return lambda module, args: checks.append((label, set(resident)))

    handles = [model.unet.mid_block.register_forward_pre_hook(watch("unet.mid_block")),
               model.vae.decoder.register_forward_pre_hook(watch("vae decode"))]
    for name in ("down_blocks", "up_blocks"):
        handles += [b.register_forward_pre_hook(watch(f"{name}.{i}")) for i, b in enumerate(getattr(model.unet, name))]
    engine.models.offloader.mover = mover
    try:
        engine.txt2img(small_params(steps=2))
    finally:
        engine.models.offloader.mover = lambda m, d: m.to(d)
        for h in handles:
            h.remove()
    small = {label for label in spy.labels.values() if label.startswith("unet.") and label not in block_labels}
    block_checks = [(label, res) for label, res in checks if label != "vae decode"]
    assert len(block_checks) == 2 * len(block_labels)          # every block ran at each of the 2 steps
    for label, res in block_checks:
        assert res & block_labels == {label}                   # only the running block is on the device
        assert small <= res and "text" not in res and "vae" not in res
    assert checks[-1] == ("vae decode", {"vae"})               # nothing of the UNet is left for the decode


def test_switching_checkpoints_removes_the_old_models_hooks(checkpoints, tmp_path):
    checkpoints.path("sd2")
    engine = _engine(checkpoints, tmp_path, memory_mode="medvram")
    old = engine.models.current
    assert len(old.unet._forward_pre_hooks) == 1
    engine.load_checkpoint("sd2.safetensors")
    assert len(old.unet._forward_pre_hooks) == 0 and len(old.vae.decoder._forward_pre_hooks) == 0
    assert len(engine.models.current.unet._forward_pre_hooks) == 1
    assert engine.txt2img(small_params(steps=2)).images[0].size == (64, 64)


def test_attention_is_torch_sdpa(engines, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model = engines["normal"].models.current
    for module in (model.unet, model.vae):
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor2_0}
    assert model.prompt_encoder.encoders[0].model.config._attn_implementation == "sdpa"
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    engines["normal"].txt2img(small_params(steps=1, cfg_scale=1.0))
    assert len(calls) > 0
    model.unet.set_attn_processor(AttnProcessor())      # a module set to the classic processor is switched back
    assert use_sdpa(model.unet) > 0 and use_sdpa(model.unet) == 0
