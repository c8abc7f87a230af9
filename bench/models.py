"""Which checkpoint a benchmark runs on, and an engine around it.

    full-size:  sd15, sdxl  (bench/fullsize.py, random weights, fp16 files in the bench cache)
    real small: demo        (models/Stable-diffusion/demo-shapes-v1.safetensors, 64x64)
    tiny:       tiny-sd1, tiny-sdxl (the test fixtures; what --quick uses)
"""
from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import torch

from common import CACHE_DIR, REPO  # noqa: F401  (common sets sys.path and offline env)

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes-v1.safetensors"
NATURAL = {"sd15": 512, "sdxl": 1024, "demo": 64, "tiny-sd1": 64, "tiny-sdxl": 64}


def checkpoint_path(name: str) -> Path:
    if name == "demo":
        return DEMO
    if name.startswith("tiny-"):
        from webui.testing.fixtures import write_checkpoint
        path = CACHE_DIR / f"{name}.safetensors"
        if not path.exists():
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            write_checkpoint(path, name[len("tiny-"):])
        return path
    import fullsize
    return fullsize.checkpoint(name)


def engine_supports(option: str) -> bool:
    from webui.engine.engine import Engine
    return option in inspect.signature(Engine.__init__).parameters


def make_engine(ckpt_cache: int = 1, data_dir: Path | None = None, **options):
    """An Engine over an empty data dir (checkpoints are passed by path). Unknown options are dropped
    (so the bench runs against an engine without, say, `precision`), and reported by `engine_supports`."""
    from webui.engine.engine import Engine
    from webui.engine.paths import DataPaths
    kept = {k: v for k, v in options.items() if engine_supports(k)}
    root = data_dir or Path(tempfile.mkdtemp(prefix="sd-bench-"))
    return Engine(DataPaths.create(root), device="cpu", ckpt_cache=ckpt_cache, **kept)


def model_bytes(model) -> int:
    seen, total = set(), 0
    for module in model.modules():
        for t in module.state_dict().values():
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def params(**overrides):
    from webui.engine.params import GenerationParams
    values = dict(prompt="a red circle in the center on a blue background", negative_prompt="", steps=4,
                  width=64, height=64, seed=1234, sampler_name="Euler", cfg_scale=7.0)
    values.update(overrides)
    return GenerationParams(**values)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two uint8-range images given as tensors."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()
