"""Shared fixtures: tiny random-weight checkpoints written once per session in the real on-disk layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny fixture models run fastest on one thread, and the test servers started as subprocesses get the other core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _fp32_on_every_cpu():
    """Pixel-exact tests assume fp32: "auto" precision would pick bf16 on a CPU with AMX (tests/test_precision.py
    covers that path explicitly). Subprocess servers get `--precision fp32` (tests/api_server.py, ui_server.py)."""
    from webui.engine import devices

    original = devices.cpu_bf16_support
    devices.cpu_bf16_support = lambda *a, **k: False
    yield
    devices.cpu_bf16_support = original


class CheckpointFactory:
    """Writes each fixture family at most once per session under one data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.ckpt_dir = data_dir / "models" / "Stable-diffusion"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def path(self, family: str, name: str | None = None, seed: int = 0) -> Path:
        from webui.testing.fixtures import write_checkpoint

        target = self.ckpt_dir / f"{name or family}.safetensors"
        if not target.exists():
            write_checkpoint(target, family, seed=seed)
        return target


    def engine(self, *families: str, root: Path | None = None):
        """An engine whose checkpoint folder holds these fixture families, with the first one loaded."""
        from webui.engine.engine import Engine
        from webui.engine.paths import DataPaths

        for family in families:
            self.path(family)
        engine = Engine(DataPaths.create(root or self.data_dir, ckpt_dir=self.ckpt_dir), device="cpu")
        engine.load_checkpoint(f"{families[0]}.safetensors")
        return engine


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> CheckpointFactory:
    return CheckpointFactory(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sd1_engine(checkpoints):
    """One engine on the SD1 fixture, shared by tests that only generate."""
    from webui.engine.engine import Engine
    from webui.engine.paths import DataPaths

    checkpoints.path("sd1")
    engine = Engine(DataPaths.create(checkpoints.data_dir), device="cpu")
    engine.load_checkpoint("sd1.safetensors")
    return engine


def small_params(**overrides):
    from webui.engine.params import GenerationParams

    values = dict(prompt="a red circle", negative_prompt="", steps=4, width=64, height=64, seed=1234,
                  sampler_name="Euler a", cfg_scale=7.0)
    values.update(overrides)
    return GenerationParams(**values)
