"""Choosing what to load at start."""
from __future__ import annotations

from pathlib import Path

from .engine.errors import EngineError
from .engine.paths import REPO_ROOT

BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "Stable-diffusion"
BUNDLED_MODEL_PREFIX = "demo-"


def bundled_demo_model() -> Path | None:
    """The small demo model that ships with the app (see docs/demo_model.md)."""
    found = sorted(BUNDLED_MODEL_DIR.glob(BUNDLED_MODEL_PREFIX + "*.safetensors"))
    return found[-1] if found else None


def default_checkpoint(engine, preferred: str | None = None) -> str | Path:
    """The preferred checkpoint if it exists, else the bundled demo model, else the first one found."""
    if preferred and engine.models.resolve_or_none(preferred) is not None:
        return preferred
    demo = bundled_demo_model()
    if demo is not None:
        return demo
    checkpoints = engine.models.checkpoints()
    if checkpoints:
        return checkpoints[0].name
    raise EngineError(f"no checkpoint found: put a .safetensors file in {engine.paths.ckpt_dir} or pass --ckpt")
