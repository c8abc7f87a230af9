"""The hook API: everything an extension may rely on. See docs/extensions.md for the guide.

Import from here only (``from webui.extensions_api import Script, AlwaysVisible, on_app_started, ...``);
other modules of the app may change without notice.

**Scripts.** Subclass `Script` in `extensions/<name>/scripts/*.py`. The host creates one instance per tab
(txt2img, img2img) where `show(is_img2img)` is true (listed in the "Script" dropdown; `run(p, *args)` does the
job) or `AlwaysVisible` (always on; the hooks `setup`, `before_process`, `process`, `before_process_batch`,
`process_batch`, `before_hr`, `postprocess_batch`, `postprocess_batch_list`, `postprocess_image`,
`postprocess` run around every generation). `p` is a `Processing`; `process_images(p)` runs one normal
generation and returns a `Processed`.

**Callbacks.** `on_<event>(fn, name="")` registers `fn` for an event of the host that is running the
extension's code. These functions work while the host imports a script file, calls a callback or calls a
script hook (the host binds itself to a context variable for that time); called from anywhere else they
raise RuntimeError. Events and their arguments: `CALLBACK_EVENTS`.

**Samplers.** `register_sampler(...)` / `register_schedule(...)` add to the app's registries: the new entries
appear in the UI dropdowns, in /sdapi/v1/samplers and /sdapi/v1/schedulers, and work in generation.

**Isolation.** An exception at import or in any hook or callback is logged with the extension's name and
traceback, listed in the Extensions tab, and the extension is disabled until the app restarts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .engine.grids import annotated_grid, image_grid
from .engine.infotext import create_infotext, parse_infotext
from .engine.sampling.registry import AUTOMATIC, SamplerInfo, ScheduleInfo
from .extensions.callbacks import (CALLBACK_EVENTS, AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams,
                                   ImageSaveParams)
from .extensions.host import ExtensionError, ExtensionHost, ExtensionSettings, current_scope
from .extensions.processing import (PostprocessBatchListArgs, PostprocessImageArgs, Processed, Processing,
                                    process_images)
from .extensions.scripts import AlwaysVisible, Script, ScriptSelection

__all__ = [
    "Script", "AlwaysVisible", "ScriptSelection", "Processing", "Processed", "process_images",
    "PostprocessImageArgs", "PostprocessBatchListArgs", "ImageSaveParams", "CFGDenoiserParams",
    "CFGDenoisedParams", "AfterCFGCallbackParams", "ExtensionSettings", "ExtensionError", "ExtensionHost",
    "CALLBACK_EVENTS", "SamplerInfo", "ScheduleInfo",
    "on_app_started", "on_model_loaded", "on_script_unloaded", "on_ui_tabs", "on_ui_settings",
    "on_before_image_saved", "on_image_saved", "on_infotext_pasted", "on_cfg_denoiser", "on_cfg_denoised",
    "on_cfg_after_cfg", "register_sampler", "register_schedule", "current_app", "current_host", "extension_dir",
    "image_grid", "annotated_grid", "create_infotext", "parse_infotext",
]


# ---- where am I ---------------------------------------------------------------------------------

def current_host() -> ExtensionHost:
    """The host running the calling extension code."""
    return current_scope().host


def current_app():
    """The App (engine, settings, storage, queue) of the host running the calling extension code."""
    return current_scope().host.app


def extension_dir() -> Path | None:
    """The folder of the extension whose code is running (A1111's scripts.basedir())."""
    scope = current_scope()
    for ext in scope.host.extensions:
        if ext.name == scope.extension:
            return Path(ext.path)
    return None


# ---- callbacks ----------------------------------------------------------------------------------

def _register(event: str, fn: Callable, name: str) -> Callable:
    current_scope().host.add_callback(event, fn, name)
    return fn


def on_app_started(fn: Callable, name: str = "") -> Callable:
    """fn(app, server): once the server is assembled; `server` is the FastAPI app (add routes to it)."""
    return _register("app_started", fn, name)


def on_model_loaded(fn: Callable, name: str = "") -> Callable:
    """fn(model): after a checkpoint is loaded (also for the model loaded at start)."""
    return _register("model_loaded", fn, name)


def on_script_unloaded(fn: Callable, name: str = "") -> Callable:
    """fn(): before the host forgets the scripts (shutdown or reload)."""
    return _register("script_unloaded", fn, name)


def on_ui_tabs(fn: Callable, name: str = "") -> Callable:
    """fn() -> [(gr.Blocks, title, elem_id), ...]: extra top-level tabs of the web UI."""
    return _register("ui_tabs", fn, name)


def on_ui_settings(fn: Callable, name: str = "") -> Callable:
    """fn(settings: ExtensionSettings): call settings.add_option(...); options appear in Settings and persist."""
    return _register("ui_settings", fn, name)


def on_before_image_saved(fn: Callable, name: str = "") -> Callable:
    """fn(params: ImageSaveParams): before an image is written; may replace params.image or
    params.pnginfo["parameters"] (the embedded infotext)."""
    return _register("before_image_saved", fn, name)


def on_image_saved(fn: Callable, name: str = "") -> Callable:
    """fn(params: ImageSaveParams): after an image is written; params.filename is its path."""
    return _register("image_saved", fn, name)


def on_infotext_pasted(fn: Callable, name: str = "") -> Callable:
    """fn(infotext: str, params: dict): after an infotext is parsed for pasting (API `infotext`, PNG Info);
    change `params` in place."""
    return _register("infotext_pasted", fn, name)


def on_cfg_denoiser(fn: Callable, name: str = "") -> Callable:
    """fn(params: CFGDenoiserParams): before each UNet call; may replace x, sigma, text_cond, text_uncond."""
    return _register("cfg_denoiser", fn, name)


def on_cfg_denoised(fn: Callable, name: str = "") -> Callable:
    """fn(params: CFGDenoisedParams): after the UNet, before guidance; may replace x (or its halves)."""
    return _register("cfg_denoised", fn, name)


def on_cfg_after_cfg(fn: Callable, name: str = "") -> Callable:
    """fn(params: AfterCFGCallbackParams): after guidance; may replace x, the denoised prediction."""
    return _register("cfg_after_cfg", fn, name)


# ---- samplers and schedule types ------------------------------------------------------------------

def register_sampler(name: str, func: Callable, aliases: Iterable[str] = (), default_scheduler: str = AUTOMATIC,
                     options: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None
                     ) -> SamplerInfo:
    """Add a sampler. `func(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, **opts)`
    follows the k-diffusion contract (docs/architecture.md): call `model(x, sigma_batch, **extra_args)` for
    the denoised prediction, `callback({"x", "i", "sigma", "sigma_hat", "denoised"})` once per step, and
    `noise_sampler(sigma, sigma_next)` for fresh noise. `options` are A1111's flags (second_order,
    brownian_noise, discard_next_to_last_sigma, uses_ensd, …); `defaults` are keyword arguments always passed.
    Raises ValueError if the name or an alias is taken."""
    scope = current_scope()
    info = SamplerInfo(name, func, tuple(aliases), default_scheduler, dict(options or {}), dict(defaults or {}))
    scope.host.register_sampler(info, scope.extension)
    return info


def register_schedule(name: str, label: str, func: Callable, aliases: Iterable[str] = (),
                      needs_model_schedule: bool = False, default_rho: float | None = None) -> ScheduleInfo:
    """Add a schedule type ("Schedule type" dropdown, /sdapi/v1/schedulers, the `scheduler` field).
    `func(n, sigma_min, sigma_max, schedule, **opts) -> Tensor` returns n+1 descending sigmas ending in 0;
    `schedule` is the model's DiscreteSchedule (sigmas, sigma_to_t, t_to_sigma)."""
    info = ScheduleInfo(name, label, func, tuple(aliases), needs_model_schedule, default_rho)
    current_scope().host.register_schedule(info)
    return info
