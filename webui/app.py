"""The application context: one object that holds the engine and the services, passed to every face."""
from __future__ import annotations

import argparse
import json
import logging
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from PIL import Image

from .engine.engine import Engine
from .engine.latent_preview import fit_latent_to_rgb, preview_image
from .engine.params import GenerationParams
from .engine.processing import GenerationResult
from .extensions.host import ExtensionHost
from .extensions.scripts import ScriptSelection
from .services.job_queue import InProcessQueue, Job, JobQueue
from .services.settings import Settings
from .services.storage import OutputStorage

log = logging.getLogger(__name__)


@dataclass
class App:
    engine: Engine
    settings: Settings
    storage: OutputStorage
    queue: JobQueue
    args: argparse.Namespace | None = None
    state: dict[str, Any] = field(default_factory=dict)
    extensions: ExtensionHost | None = None   # scripts and callbacks of the loaded extensions
    # latent→RGB preview maps per VAE; weak keys, so an unloaded VAE's map goes with it (an id() key could be
    # reused by the next VAE allocated at the same address and hand it a stale map)
    preview_maps: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def __post_init__(self) -> None:
        if self.extensions is None:
            self.extensions = ExtensionHost(self)   # empty until load_installed()

    @classmethod
    def create(cls, args: argparse.Namespace) -> "App":
        from .cli import make_engine
        from .engine.paths import DataPaths

        paths = DataPaths.create(args.data_dir, args.ckpt_dir, args.vae_dir, args.lora_dir, args.embeddings_dir)
        paths.ensure()
        settings = Settings.load(paths.config_file)
        args.ckpt = args.ckpt or settings.get("sd_model_checkpoint") or None
        if args.ckpt and not args.vae:
            args.vae = settings.get("sd_vae")
        engine = make_engine(args, prediction_overrides=_overrides(settings), require_model=False)
        queue = InProcessQueue(max_size=settings.get("queue_max_size"))
        app = cls(engine=engine, settings=settings, storage=OutputStorage(paths.outputs_dir), queue=queue, args=args)
        app.extensions.load_installed()
        app.extensions.ui_settings()   # extension options exist before settings are applied or shown
        if engine.models.current is not None:
            app.extensions.model_loaded(engine.models.current)
        settings.on_change(app.apply_settings)
        startup = {k: v for k, v in settings.values.items() if k in settings.options}
        if args.ckpt_cache:   # the command-line flag wins over the saved setting
            startup.pop("sd_checkpoints_limit", None)
        for flag, key in (("precision", "precision"), ("vae_tiling", "vae_tiling"),
                          ("vae_tiled_threshold", "vae_tiled_threshold")):
            if getattr(args, flag, None):
                startup.pop(key, None)
        app.apply_settings(startup)
        return app

    def apply_settings(self, changed: dict[str, Any]) -> None:
        """Settings that take effect at once, without a restart."""
        if "queue_max_size" in changed:
            self.queue.max_size = int(changed["queue_max_size"])
        if "sd_checkpoints_limit" in changed:
            self.engine.models.cache_size = int(changed["sd_checkpoints_limit"])
        if "sd2_prediction_overrides" in changed:
            self.engine.models.prediction_overrides.clear()
            self.engine.models.prediction_overrides.update(_overrides(self.settings))
        if "precision" in changed:
            self.engine.set_precision(changed["precision"])
        tiling = self.engine.devices.vae_tiling
        if "vae_tiling" in changed:
            tiling.mode = changed["vae_tiling"]
        if "vae_tiled_threshold" in changed:
            tiling.threshold = int(changed["vae_tiled_threshold"])
        prompt_options = self.engine.prompt_options
        for key, attr in (("emphasis", "emphasis"), ("comma_padding_backtrack", "comma_padding_backtrack"),
                          ("sdxl_clip_l_skip", "sdxl_clip_l_skip"), ("pad_cond_uncond", "pad_conds")):
            if key in changed:
                setattr(prompt_options, attr, changed[key])
        for kind, key in (("txt2img", "outdir_txt2img_samples"), ("img2img", "outdir_img2img_samples")):
            if key in changed:
                value = str(changed[key] or "").strip()
                if value:
                    self.storage.folder_overrides[kind] = Path(value)
                else:
                    self.storage.folder_overrides.pop(kind, None)

    # ---- generation through the queue ------------------------------------------------------------
    def submit(self, kind: str, params: GenerationParams, owner: str = "local", save: bool | None = None,
               job_id: str | None = None, around: Callable[[], ContextManager] | None = None,
               meta: dict | None = None, scripts: ScriptSelection | None = None) -> Job:
        """Queue a txt2img or img2img job; the result's images are saved per the settings.

        `around`, if given, makes a context manager entered on the worker around the generation (for
        per-request model or setting overrides that must be undone even when the job fails).
        `scripts` selects an extension script and gives script args (see webui/extensions_api.py).
        """
        params.validate(img2img=kind == "img2img")
        save = self.settings.get("samples_save") if save is None else save

        def run(control, progress) -> GenerationResult:
            def step(info) -> None:
                self.fit_preview_map()   # the job may have switched models (override, refiner): new VAE, new map
                progress(info)

            with around() if around is not None else nullcontext():
                self.fit_preview_map()
                result = self.extensions.run_job(kind, params, scripts, control, step)
            if save:
                result.info["saved_paths"] = [str(p) for p in self.save_result(kind, result)]
            return result

        return self.queue.submit(kind, run, owner=owner, job_id=job_id, meta=meta)

    def save_result(self, kind: str, result: GenerationResult) -> list[Path]:
        fmt = self.settings.get("samples_format")
        keep_info = self.settings.get("enable_pnginfo")
        paths = []
        for image, text, seed in zip(result.images, result.infotexts, result.seeds):
            saving = self.extensions.before_image_saved(image, result.params, text if keep_info else None)
            path = self.storage.save(saving.image, kind, seed, saving.pnginfo.get("parameters"), extension=fmt)
            saving.filename = str(path)
            self.extensions.image_saved(saving)
            paths.append(path)
        return paths

    def fit_preview_map(self) -> None:
        """Fit the current VAE's latent→RGB preview map once, on the generation worker (at job start and, after
        a model switch, between steps). Never on a UI/API thread: the fit runs a VAE encode, which under
        --medvram/--lowvram would move the VAE onto the GPU in the middle of a UNet step."""
        model = self.engine.models.current
        previews_on = self.settings.get("live_previews_enable") and self.settings.get("show_progress_every_n_steps")
        if model is None or model.vae is None or not previews_on:
            return
        if model.vae not in self.preview_maps:
            self.preview_maps[model.vae] = fit_latent_to_rgb(model.vae)

    def preview(self, job: Job) -> Image.Image | None:
        """The job's current x0 prediction, mapped to RGB without a VAE decode (None until the map is fitted)."""
        latent = job.latest
        model = self.engine.models.current
        if latent is None or model is None or model.vae is None:
            return None
        coefs = self.preview_maps.get(model.vae)
        if coefs is None:
            return None
        return preview_image(latent, coefs, upscale=max(1, 512 // max(latent.shape[-1], 1) // 4))


def _overrides(settings: Settings) -> dict[str, str]:
    try:
        value = json.loads(settings.get("sd2_prediction_overrides") or "{}")
        return value if isinstance(value, dict) else {}
    except json.JSONDecodeError:
        log.warning("setting sd2_prediction_overrides is not valid JSON; ignoring it")
        return {}
