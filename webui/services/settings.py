"""User settings persisted in DATA/config.json, with types, bounds and A1111's option names.

Writes are atomic. A corrupt config.json at start is moved aside to config.json.bak-<time> and replaced by
defaults, with a warning, so a bad edit never stops the app from starting.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic_files import atomic_write_text
from ..engine.errors import InvalidParameterError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    section: str = "General"
    kind: type = str
    minimum: float | None = None
    maximum: float | None = None
    choices: Callable[[], list[str]] | tuple[str, ...] | None = None
    hidden: bool = False   # persisted, but edited elsewhere (e.g. the Extensions tab), not on the Settings page

    def coerce(self, value: Any) -> Any:
        """Check and convert a value; raise InvalidParameterError naming the option."""
        try:
            if self.kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                out = value
            elif self.kind is list:
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise TypeError
                out = list(value)
            elif self.kind in (int, float):
                if isinstance(value, bool):
                    raise TypeError
                out = self.kind(value)
                if self.kind is int and float(value) != out:
                    raise ValueError
            else:
                out = self.kind(value)
        except (TypeError, ValueError):
            raise InvalidParameterError(self.key, f"expected {self.kind.__name__}, got {value!r}") from None
        if self.minimum is not None and out < self.minimum or self.maximum is not None and out > self.maximum:
            raise InvalidParameterError(self.key, f"must be between {self.minimum} and {self.maximum} (got {out})")
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is not None and out not in choices:
            raise InvalidParameterError(self.key, f"must be one of {', '.join(map(str, choices))} (got {out!r})")
        return out


def core_options() -> list[Option]:
    return [
        Option("sd_model_checkpoint", "", "Checkpoint", "Stable Diffusion"),
        Option("sd_vae", "Automatic", "SD VAE", "Stable Diffusion"),
        Option("sd_checkpoints_limit", 1, "Checkpoints to keep in RAM", "Stable Diffusion", int, 1, 10),
        Option("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", int, 1, 12),
        Option("default_sampler", "Euler a", "Default sampler", "Sampler parameters"),
        Option("default_scheduler", "Automatic", "Default schedule type", "Sampler parameters"),
        Option("outdir_txt2img_samples", "", "Output folder for txt2img images (empty: outputs/txt2img-images)", "Saving images", str),
        Option("outdir_img2img_samples", "", "Output folder for img2img images (empty: outputs/img2img-images)", "Saving images", str),
        Option("samples_format", "png", "File format", "Saving images", str, choices=("png", "jpg", "webp")),
        Option("samples_save", True, "Always save all generated images", "Saving images", bool),
        Option("enable_pnginfo", True, "Save generation parameters in PNG", "Saving images", bool),
        Option("show_progress_every_n_steps", 1, "Live preview every N steps (0: off)", "Live previews", int, 0, 100),
        Option("live_previews_enable", True, "Show live previews", "Live previews", bool),
        Option("queue_max_size", 32, "Most jobs waiting in the queue", "System", int, 1, 1000),
        Option("img_max_pixels", 64_000_000, "Largest uploaded image (pixels)", "System", int, 1_000_000, 400_000_000),
        Option("max_request_mb", 50, "Largest request body, uploads included (MB)", "System", int, 1, 4096),
        Option("emphasis", "Original", "Emphasis mode for (word:1.2) weights", "Stable Diffusion", str,
               choices=("Original", "No norm", "Ignore", "None")),
        Option("comma_padding_backtrack", 20, "Prompt word wrap length limit (tokens; 0: off)", "Stable Diffusion", int, 0, 74),
        Option("sdxl_clip_l_skip", False, "Clip skip reaches SDXL's CLIP-L tower", "Stable Diffusion", bool),
        Option("pad_cond_uncond", False, "Pad prompt and negative prompt to the same length", "Optimizations", bool),
        Option("precision", "auto", "UNet/VAE precision (auto: bf16 on CPUs with native bf16, fp32 on other CPUs, "
               "fp16 on GPU; applies at the next step)", "Optimizations", str, choices=("auto", "fp32", "bf16", "fp16")),
        Option("vae_tiling", "auto", "Tiled VAE encode/decode (auto: for images above the size below)", "Optimizations",
               str, choices=("auto", "always", "never")),
        Option("vae_tiled_threshold", 2048 * 2048, "Tile the VAE above this many pixels", "Optimizations", int,
               64 * 64, 400_000_000),
        Option("sd2_prediction_overrides", "{}", "SD2 prediction type per checkpoint (JSON: name → epsilon/v_prediction)", "Stable Diffusion", str),
        Option("disabled_extensions", (), "Disabled extensions (folder names)", "Extensions", list, hidden=True),
    ]


@dataclass
class Settings:
    path: Path
    options: dict[str, Option] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path: Path, options: list[Option] | None = None) -> "Settings":
        settings = cls(path=Path(path), options={o.key: o for o in (options or core_options())})
        settings.values = settings._read()
        return settings

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except (ValueError, UnicodeDecodeError) as exc:
            backup = self.path.with_name(f"{self.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            self.path.replace(backup)
            log.warning("config file %s was corrupt (%s); moved it to %s and started from defaults", self.path, exc, backup)
            return {}

    def add_options(self, options: list[Option]) -> None:
        """Extensions register their own settings here."""
        for option in options:
            self.options[option.key] = option

    def get(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        option = self.options.get(key)
        if option is None:
            raise KeyError(key)
        return option.default

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def as_dict(self) -> dict[str, Any]:
        return {k: self.get(k) for k in self.options} | {k: v for k, v in self.values.items() if k not in self.options}

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every change first; apply and save only if all are valid."""
        checked = {}
        for key, value in changes.items():
            option = self.options.get(key)
            if option is None:
                raise InvalidParameterError(key, "unknown setting")
            checked[key] = option.coerce(value)
        with self._lock:
            self.values.update(checked)
            self.save()
        for listener in self.listeners:
            listener(checked)
        return checked

    def on_change(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """`listener(changed)` runs after every successful update, with the changed keys and values."""
        self.listeners.append(listener)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.values, indent=2, ensure_ascii=False))
