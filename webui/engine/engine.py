"""The engine's front door: one object that owns the model manager and the sampler registries.

Faces (CLI, UI, API) and services hold an `Engine`; nothing in the engine reaches for global state.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from .conditioning import PromptOptions
from .denoiser import DenoiserHooks
from .depth import DepthEstimators
from .depth_embedded import load_embedded_estimator
from .devices import device_config
from .embeddings import EmbeddingLibrary, EmbeddingSet
from .errors import EngineError
from .hashing import HashCache
from .job_hooks import ProcessingHooks
from .job_plan import checkpoint_switches
from .model_manager import ModelManager, SDModel
from .networks import LoraFile, NetworkApplier, Networks
from .params import GenerationParams
from .paths import DataPaths
from .precision import set_precision
from .processing import GenerationResult, JobControl, ProcessingContext, StepInfo, generate
from .sampling.registry import default_sampler_registry, default_schedule_registry, resolve_sampler_and_schedule
from .vae_tiling import VaeTiling


class Engine:
    def __init__(self, paths: DataPaths | None = None, device: str | None = None, ckpt_cache: int = 1,
                 no_half: bool = False, no_half_vae: bool = False, prediction_overrides: dict[str, str] | None = None,
                 extra_checkpoints: list[Path] = (), precision: str = "auto", memory_mode: str = "normal",
                 channels_last: bool = False, compile: bool = False, vae_tiling: VaeTiling | None = None):
        self.paths = paths or DataPaths.create()
        # precision and vae_tiling may change at any time (read per call); the rest applies at model load
        self.devices = device_config(device, no_half=no_half, no_half_vae=no_half_vae, precision=precision,
                                     memory_mode=memory_mode, channels_last=channels_last, compile=compile,
                                     vae_tiling=vae_tiling)
        self.hashes = HashCache(self.paths.cache_file)
        self.models = ModelManager(self.paths, self.devices, self.hashes, ckpt_cache, prediction_overrides,
                                   extra_checkpoints)
        self.samplers = default_sampler_registry()
        self.schedules = default_schedule_registry()
        self.hooks = DenoiserHooks()
        self.depth = DepthEstimators(self.paths.depth_dir, load_embedded_estimator)
        self.networks = Networks(self.paths.lora_dir, self.hashes, NetworkApplier(in_place=not self.devices.is_cpu))
        self.embeddings = EmbeddingLibrary(self.paths.embeddings_dirs, self.hashes)
        self.prompt_options = PromptOptions()   # the emphasis/padding settings; the app updates them
        self.lock = threading.Lock()   # one generation or model swap at a time
        self.model_listeners: list[Callable[[SDModel], None]] = []   # called after load_checkpoint (extensions)

    # ---- models ----------------------------------------------------------------------------------
    def load_checkpoint(self, query: str | Path) -> SDModel:
        with self.lock:
            model = self.models.load(query)
        for listener in self.model_listeners:
            listener(model)
        return model

    def set_vae(self, choice: str) -> None:
        with self.lock:
            self.models.set_vae(choice)

    def set_precision(self, value: str) -> None:
        """"auto", "fp32", "bf16" or "fp16"; takes effect at the next UNet/VAE call, without a reload.

        On GPU the weights keep the dtype they were loaded in (devices.py); this switches only fp32 weights."""
        set_precision(self.devices, value)

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
                                 hooks=self.hooks, models=self.models, samplers=self.samplers,
                                 schedules=self.schedules, depth=self.depth,
                                 prompt_options=self.prompt_options, embeddings=self.embeddings)

    def txt2img(self, params: GenerationParams, control: JobControl | None = None,
                progress: Callable[[StepInfo], None] | None = None,
                hooks: ProcessingHooks | None = None) -> GenerationResult:
        if params.init_images:
            raise EngineError("txt2img takes no init image; use img2img")
        return self._generate(params, control, progress, img2img=False, hooks=hooks)

    def img2img(self, params: GenerationParams, control: JobControl | None = None,
                progress: Callable[[StepInfo], None] | None = None,
                hooks: ProcessingHooks | None = None) -> GenerationResult:
        return self._generate(params, control, progress, img2img=True, hooks=hooks)

    def _generate(self, params, control, progress, img2img: bool, hooks: ProcessingHooks | None = None
                  ) -> GenerationResult:
        params.validate(img2img=img2img)   # before the lock: bad input never waits for, or switches, a model
        with self.lock, checkpoint_switches(self.models, params):
            ctx = self.context(params)
            with self.networks.applied(ctx.model, params):   # weights are restored when the job ends
                return generate(ctx, params, control, progress, hooks)

    # ---- extra networks --------------------------------------------------------------------------
    def list_loras(self, refresh: bool = False) -> list[LoraFile]:
        if refresh:
            self.networks.refresh()
        return self.networks.files()

    def list_embeddings(self) -> EmbeddingSet:
        """Embeddings the current model can use (`loaded`) and those it cannot (`skipped`).

        With no model loaded, every readable embedding is listed as loaded."""
        model = self.models.current
        if model is None:
            return EmbeddingSet(self.embeddings.all(), {}, self.hashes)
        return self.embeddings.for_model(model)
