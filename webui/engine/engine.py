"""The engine's front door: one object that owns the model manager and the sampler registries.

Faces (CLI, UI, API) and services hold an `Engine`; nothing in the engine reaches for global state.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from .denoiser import DenoiserHooks
from .devices import device_config
from .errors import EngineError
from .hashing import HashCache
from .model_manager import ModelManager, SDModel
from .params import GenerationParams
from .paths import DataPaths
from .processing import GenerationResult, JobControl, ProcessingContext, StepInfo, generate
from .sampling.registry import default_sampler_registry, default_schedule_registry, resolve_sampler_and_schedule


class Engine:
    def __init__(self, paths: DataPaths | None = None, device: str | None = None, ckpt_cache: int = 1,
                 no_half: bool = False, no_half_vae: bool = False, prediction_overrides: dict[str, str] | None = None,
                 extra_checkpoints: list[Path] = ()):
        self.paths = paths or DataPaths.create()
        self.devices = device_config(device, no_half=no_half, no_half_vae=no_half_vae)
        self.hashes = HashCache(self.paths.cache_file)
        self.models = ModelManager(self.paths, self.devices, self.hashes, ckpt_cache, prediction_overrides,
                                   extra_checkpoints)
        self.samplers = default_sampler_registry()
        self.schedules = default_schedule_registry()
        self.hooks = DenoiserHooks()
        self.lock = threading.Lock()   # one generation or model swap at a time

    # ---- models ----------------------------------------------------------------------------------
    def load_checkpoint(self, query: str | Path) -> SDModel:
        with self.lock:
            return self.models.load(query)

    def set_vae(self, choice: str) -> None:
        with self.lock:
            self.models.set_vae(choice)

    def require_model(self) -> SDModel:
        if self.models.current is None:
            raise EngineError("no checkpoint is loaded; put a .safetensors file in "
                              f"{self.paths.ckpt_dir} or pass --ckpt")
        return self.models.current

    # ---- generation ------------------------------------------------------------------------------
    def context(self, params: GenerationParams) -> ProcessingContext:
        model = self.require_model()
        sampler, schedule = resolve_sampler_and_schedule(self.samplers, self.schedules, params.sampler_name,
                                                         params.scheduler)
        return ProcessingContext(model=model, sampler=sampler, schedule=schedule, device=self.devices.device,
                                 model_hash=self.models.model_hash(model), vae_hash=self.models.vae_hash(model),
                                 hooks=self.hooks)

    def txt2img(self, params: GenerationParams, control: JobControl | None = None,
                progress: Callable[[StepInfo], None] | None = None) -> GenerationResult:
        if params.init_images:
            raise EngineError("txt2img takes no init image; use img2img")
        return self._generate(params, control, progress)

    def img2img(self, params: GenerationParams, control: JobControl | None = None,
                progress: Callable[[StepInfo], None] | None = None) -> GenerationResult:
        params.validate(img2img=True)
        return self._generate(params, control, progress)

    def _generate(self, params, control, progress) -> GenerationResult:
        params.validate(img2img=bool(params.init_images))
        with self.lock:
            return generate(self.context(params), params, control, progress)
