"""A1111's `modules.script_callbacks`, registered with the hook API of the running host.

Callbacks keep A1111's signatures. Where this app's event differs, the callback is wrapped:
`on_app_started(cb)` calls `cb(demo, app)` with demo=None (this app builds its UI without handing it to
extensions) and app = the FastAPI server; `on_ui_settings(cb)` calls `cb()` (options are added through
`shared.opts.add_option`). Events this app does not have are accepted and never called (logged once).
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

from webui import extensions_api as api
from webui.extensions_api import AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams, ImageSaveParams

from . import _bridge

log = logging.getLogger(__name__)

__all__ = ["on_app_started", "on_model_loaded", "on_ui_tabs", "on_ui_settings", "on_before_image_saved",
           "on_image_saved", "on_infotext_pasted", "on_cfg_denoiser", "on_cfg_denoised", "on_cfg_after_cfg",
           "on_script_unloaded", "ImageSaveParams", "CFGDenoiserParams", "CFGDenoisedParams",
           "AfterCFGCallbackParams", "remove_current_script_callbacks", "remove_callbacks_for_function"]


def _remember() -> None:
    _bridge.app_or_none()   # inside extension code: remember this host's App for later calls outside it


def _wrap(callback: Callable, call: Callable) -> Callable:
    wrapper = functools.partial(call, callback)
    wrapper.__wrapped__ = callback          # remove_callbacks_for_function finds it by the original
    wrapper.__qualname__ = getattr(callback, "__qualname__", repr(callback))
    return wrapper


def on_app_started(callback: Callable, *, name: str | None = None) -> None:
    """callback(demo, app): demo is None here; app is the FastAPI server (None without one)."""
    _remember()
    api.on_app_started(_wrap(callback, lambda cb, app, server: cb(None, server)), name or "")


def on_model_loaded(callback: Callable, *, name: str | None = None) -> None:
    """callback(sd_model): this app's loaded model object (not an LDM module)."""
    _remember()
    api.on_model_loaded(callback, name or "")


def on_ui_tabs(callback: Callable, *, name: str | None = None) -> None:
    """callback() -> [(gr.Blocks, title, elem_id), ...]."""
    _remember()
    api.on_ui_tabs(callback, name or "")


def on_ui_settings(callback: Callable, *, name: str | None = None) -> None:
    """callback(): add options with shared.opts.add_option(key, shared.OptionInfo(...))."""
    _remember()
    api.on_ui_settings(_wrap(callback, lambda cb, settings: cb()), name or "")


def on_before_image_saved(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_before_image_saved(callback, name or "")


def on_image_saved(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_image_saved(callback, name or "")


def on_infotext_pasted(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_infotext_pasted(callback, name or "")


def on_cfg_denoiser(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_cfg_denoiser(callback, name or "")


def on_cfg_denoised(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_cfg_denoised(callback, name or "")


def on_cfg_after_cfg(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_cfg_after_cfg(callback, name or "")


def on_script_unloaded(callback: Callable, *, name: str | None = None) -> None:
    _remember()
    api.on_script_unloaded(callback, name or "")


def _never_called(event: str) -> Callable:
    def register(callback: Callable, *args, name: str | None = None, **kwargs) -> None:
        log.warning("extension %s registered %s: this app has no such event; the callback will not be called",
                    _bridge.extension_name() or "?", event)
    register.__name__ = event
    return register


for _event in ("on_before_reload", "on_ui_train_tabs", "on_before_component", "on_after_component",
               "on_image_grid", "on_extra_noise", "on_list_optimizers", "on_list_unets",
               "on_before_token_counter", "on_before_ui"):
    globals()[_event] = _never_called(_event)


def remove_current_script_callbacks() -> None:
    """Drop the callbacks registered by the script file being loaded."""
    scope = _bridge._scope()
    if scope is None or not scope.script:
        return
    scope.host.callbacks.remove(lambda entry: not (entry.extension == scope.extension
                                                   and entry.script == scope.script))


def remove_callbacks_for_function(callback_func: Callable) -> None:
    def same(fn) -> bool:
        return fn is callback_func or getattr(fn, "__wrapped__", None) is callback_func

    _bridge.host().callbacks.remove(lambda entry: not same(entry.fn))
