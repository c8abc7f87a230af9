"""The extension host: loads the scripts of enabled extensions, owns their callbacks, and isolates failures.

One host per App (no module-level registry). While the host runs extension code — importing a script file,
calling a callback or a script hook — it binds itself to a context variable, so module-level calls such as
`extensions_api.on_app_started(fn)` or `register_sampler(...)` reach *this* host and are recorded as belonging
to the extension being run.

Isolation: an exception at import or in any hook/callback is logged with the extension's name and traceback,
recorded in `host.errors` (`ExtensionError`), and the extension is disabled for the rest of the run (its
callbacks are dropped, its scripts skipped). Generation and the other extensions go on.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import re
import sys
import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..engine.errors import EngineError, InvalidParameterError
from ..engine.params import GenerationParams
from ..engine.processing import GenerationResult, JobControl, StopSampling
from ..engine.sampling.registry import SamplerInfo, ScheduleInfo
from .callbacks import (AfterCFGCallbackParams, CallbackRegistry, CFGDenoisedParams, CFGDenoiserParams,
                        ImageSaveParams)
from .processing import Processed, Processing
from .scripts import AlwaysVisible, Script, ScriptRunner, ScriptSelection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """Which host is running which extension's code right now."""
    host: "ExtensionHost"
    extension: str
    script: str = ""


_scope: ContextVar[Scope | None] = ContextVar("webui_extension_scope", default=None)


def current_scope() -> Scope:
    scope = _scope.get()
    if scope is None:
        raise RuntimeError("this extension API call only works while the extension host runs extension code "
                           "(a script file's import, a callback, or a script hook)")
    return scope


@dataclass
class ExtensionError:
    """One failure of an extension, shown in the Extensions tab and the log."""
    extension: str
    where: str            # "import", a hook name ("process", "run", …) or a callback event ("callback app_started")
    traceback: str
    script: str = ""      # the script file, when known
    time: float = field(default_factory=time.time)


class ExtensionFailed(EngineError):
    """A selected script's run() raised: the job fails with this message; the extension is disabled."""


@dataclass
class LoadedScript:
    extension: str
    path: Path
    cls: type


class ExtensionSettings:
    """What `on_ui_settings` callbacks receive: add options that appear in Settings and persist."""

    def __init__(self, settings, section: str):
        self.settings = settings
        self.section = section

    def add_option(self, key: str, default: Any, label: str, section: str | None = None, kind: type | None = None,
                   minimum: float | None = None, maximum: float | None = None,
                   choices: tuple | list | Callable[[], list] | None = None) -> None:
        from ..services.settings import Option

        kind = kind or (type(default) if type(default) in (bool, int, float, str, list) else str)
        choices = tuple(choices) if isinstance(choices, list) else choices
        self.settings.add_options([Option(key, default, label, section or self.section, kind, minimum, maximum,
                                          choices)])

    def get(self, key: str) -> Any:
        return self.settings.get(key)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """The extension folder is importable while its scripts load (A1111 does the same)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


class JobRuntime:
    """One job's view of the host: what `process_images(p)` needs, reachable from `p.runtime`."""

    def __init__(self, host: "ExtensionHost", kind: str, runner: ScriptRunner, control: JobControl,
                 progress: Callable | None, alwayson_args: dict[int, list]):
        self.host, self.kind, self.runner = host, kind, runner
        self.engine = host.app.engine
        self.control, self.progress = control, progress
        self.alwayson_args = alwayson_args
        self.p: Processing | None = None
        self._original_model = None

    @property
    def interrupted(self) -> bool:
        return self.control.interrupted

    def process_images(self, p: Processing) -> Processed:
        self._apply_overrides(p)
        self.runner.each(p, "before_process")
        generate = self.engine.img2img if p.is_img2img else self.engine.txt2img
        result = generate(p, self.control, self.progress, hooks=self.runner.processing_hooks())
        processed = Processed.from_result(p, result)
        self.runner.each(p, "postprocess", processed)
        return processed

    def _apply_overrides(self, p: Processing) -> None:
        name = (p.override_settings or {}).get("sd_model_checkpoint")
        if not name:
            return
        current = self.engine.models.current
        wanted = self.engine.models.resolve(name)
        if current is None or current.file.path != wanted.path:
            if self._original_model is None and current is not None:
                self._original_model = current.file.path
            self.engine.load_checkpoint(wanted.path)

    def restore_model(self) -> None:
        if self._original_model is not None:
            self.engine.load_checkpoint(self._original_model)
            self._original_model = None


class ExtensionHost:
    def __init__(self, app):
        self.app = app
        self.callbacks = CallbackRegistry()
        self.errors: list[ExtensionError] = []
        self.disabled: set[str] = set()          # failed during this run
        self.extensions: list = []               # registry.Extension objects that were loaded
        self.script_classes: list[LoadedScript] = []
        self.modules: dict[str, Any] = {}
        self._runners: dict[str, ScriptRunner] = {}
        self._titles: dict[int, str] = {}
        self._ui_info: dict[int, list[dict]] = {}
        self._job: JobRuntime | None = None
        engine = app.engine
        engine.hooks.before.append(self._cfg_denoiser)
        engine.hooks.denoised.append(self._cfg_denoised)
        engine.hooks.after_cfg.append(self._cfg_after_cfg)
        engine.model_listeners.append(self.model_loaded)

    # ---- running extension code -------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, extension: str, script: str = "") -> Iterator[None]:
        token = _scope.set(Scope(self, extension, script))
        try:
            yield
        finally:
            _scope.reset(token)

    def guard(self, extension: str, where: str, fn: Callable, *args, reraise: bool = False, **kwargs) -> Any:
        """Call extension code; on an exception record it, disable the extension and return None
        (or raise ExtensionFailed with `reraise`). Engine errors pass through: they are the job's."""
        if extension in self.disabled:
            return None
        try:
            with self.scope(extension):
                return fn(*args, **kwargs)
        except (EngineError, StopSampling):
            raise
        except Exception as exc:
            self.fail(extension, where, traceback.format_exc())
            if reraise:
                raise ExtensionFailed(f"extension {extension!r} failed in {where}: {exc!r}; it is disabled until "
                                      "the app restarts (details in the log and the Extensions tab)") from exc
            return None

    def fail(self, extension: str, where: str, trace: str, script: str = "") -> None:
        self.errors.append(ExtensionError(extension, where, trace, script))
        log.error("extension %s failed in %s%s; it is disabled until restart:\n%s", extension, where,
                  f" ({script})" if script else "", trace)
        if extension:
            self.disabled.add(extension)
            self.callbacks.remove(lambda entry: entry.extension != extension)

    # ---- loading ----------------------------------------------------------------------------------
    def load_installed(self) -> None:
        """Discover the extensions in the app's extension folders and load the enabled ones."""
        from .registry import discover_extensions

        paths = self.app.engine.paths
        disabled = set(self.app.settings.get("disabled_extensions") or ())
        self.load(discover_extensions(paths.extension_dirs(), disabled))

    def load(self, extensions: list) -> None:
        for ext in extensions:
            if not ext.enabled:
                continue
            self.extensions.append(ext)
            for path in ext.script_files():
                if ext.name in self.disabled:
                    break
                self._load_script(ext, path)
        self._runners.clear()

    def _load_script(self, ext, path: Path) -> None:
        name = f"webui_ext_{_slug(ext.name)}_{_slug(path.stem)}"
        try:
            with self.scope(ext.name, str(path)), _on_sys_path(ext.path):
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module    # dataclasses and pickling look modules up by name
                spec.loader.exec_module(module)
        except (Exception, SystemExit):
            sys.modules.pop(name, None)
            self.fail(ext.name, "import", traceback.format_exc(), script=path.name)
            return
        self.modules[name] = module
        for obj in list(vars(module).values()):
            if isinstance(obj, type) and issubclass(obj, Script) and obj.__module__ == name:
                self.script_classes.append(LoadedScript(ext.name, path, obj))

    def unload(self) -> None:
        """Fire script_unloaded, then forget every script, callback and module (samplers stay registered)."""
        self.fire("script_unloaded")
        self.callbacks.remove(lambda entry: False)
        for name in self.modules:
            sys.modules.pop(name, None)
        self.modules.clear()
        self.script_classes.clear()
        self.extensions.clear()
        self._runners.clear()

    # ---- scripts ----------------------------------------------------------------------------------
    def runner(self, kind: str) -> ScriptRunner:
        """The script runner of a tab kind: "txt2img", or any img2img kind."""
        key = "txt2img" if kind == "txt2img" else "img2img"
        if key not in self._runners:
            is_img2img = key == "img2img"
            self._runners[key] = ScriptRunner(self, is_img2img, self._instances(is_img2img))
        return self._runners[key]

    def _instances(self, is_img2img: bool) -> list[Script]:
        out = []
        for loaded in self.script_classes:
            ext = loaded.extension
            script = self.guard(ext, f"{loaded.cls.__name__}()", loaded.cls)
            if script is None:
                continue
            script.filename, script.extension = str(loaded.path), ext
            script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
            shown = self.guard(ext, "show", script.show, is_img2img)
            title = self.guard(ext, "title", script.title)
            if not shown or not isinstance(title, str):
                continue
            script.alwayson = shown is AlwaysVisible
            self._titles[id(script)] = title
            out.append(script)
        return out

    def title_of(self, script: Script) -> str:
        return self._titles.get(id(script), type(script).__name__)

    def describe_ui(self, script: Script, is_img2img: bool) -> list[dict]:
        """The components `ui()` makes, as the API's script-info `args` (label, value, minimum, …)."""
        key = id(script)
        if key not in self._ui_info:
            self._ui_info[key] = self._build_ui_info(script, is_img2img)
        return self._ui_info[key]

    def _build_ui_info(self, script: Script, is_img2img: bool) -> list[dict]:
        import gradio as gr

        with gr.Blocks():
            components = self.guard(script.extension, "ui", script.ui, is_img2img)
        return [component_info(c) for c in (components or [])]

    def script_info(self) -> list[dict]:
        """A1111's /sdapi/v1/script-info: every active script of both tabs with its ui() args."""
        out = []
        for kind in ("txt2img", "img2img"):
            runner = self.runner(kind)
            for script in runner.selectable_scripts + runner.alwayson_scripts:
                out.append({"name": self.title_of(script).lower(), "is_alwayson": script.alwayson,
                            "is_img2img": runner.is_img2img, "args": self.describe_ui(script, runner.is_img2img)})
        return out

    def run_job(self, kind: str, params: GenerationParams, selection: ScriptSelection | None,
                control: JobControl, progress: Callable | None) -> GenerationResult:
        """One job with its scripts: setup, then the selected script's run (or a plain process_images)."""
        selection = selection or ScriptSelection()
        runner = self.runner(kind)
        script = None
        if selection.name and selection.name.strip().lower() != "none":
            script = runner.find(selection.name, alwayson=False)
            if script is None:
                raise InvalidParameterError("script_name", f"no script named {selection.name!r}; available: "
                                                           f"{', '.join(runner.titles()) or 'none'}")
        p = Processing.from_params(params, is_img2img=kind != "txt2img")
        runtime = JobRuntime(self, kind, runner, control, progress, runner.alwayson_args(selection))
        p.runtime, p.scripts, runtime.p = runtime, runner, p
        self._job = runtime
        try:
            runner.each(p, "setup")
            processed = None
            if script is not None:
                p.script_args = tuple(runner.args_for(script, selection.args))
                processed = self.guard(script.extension, "run", script.run, p, *p.script_args, reraise=True)
            if processed is None:
                processed = runtime.process_images(p)
            return processed.to_result()
        finally:
            self._job = None
            runtime.restore_model()

    # ---- samplers and schedules -------------------------------------------------------------------
    def register_sampler(self, info: SamplerInfo, extension: str = "") -> None:
        if extension:
            info = _replace_func(info, self._guarded_sampler(extension, info.name, info.func))
        self.app.engine.samplers.register(info)

    def register_schedule(self, info: ScheduleInfo) -> None:
        self.app.engine.schedules.register(info)

    def _guarded_sampler(self, extension: str, name: str, func: Callable) -> Callable:
        @functools.wraps(func)   # keeps the signature: the engine passes only the options func accepts
        def sampler(*args, **kwargs):
            try:
                with self.scope(extension):
                    return func(*args, **kwargs)
            except (EngineError, StopSampling):
                raise
            except Exception as exc:
                self.fail(extension, f"sampler {name}", traceback.format_exc())
                raise ExtensionFailed(f"sampler {name!r} of extension {extension!r} failed: {exc!r}") from exc
        return sampler

    # ---- callbacks --------------------------------------------------------------------------------
    def add_callback(self, event: str, fn: Callable, name: str = "") -> None:
        scope = _scope.get()
        self.callbacks.add(event, fn, scope.extension if scope else "", scope.script if scope else "", name)

    def fire(self, event: str, *args) -> list:
        """Call every callback of `event` (each guarded); returns their non-None results."""
        results = []
        for entry in self.callbacks.entries(event):
            if entry.extension in self.disabled:
                continue
            result = self.guard(entry.extension, f"callback {event}", entry.fn, *args)
            if result is not None:
                results.append(result)
        return results

    def app_started(self, server=None) -> None:
        self.fire("app_started", self.app, server)

    def model_loaded(self, model) -> None:
        self.fire("model_loaded", model)

    def ui_settings(self) -> None:
        for entry in self.callbacks.entries("ui_settings"):
            section = entry.extension or "Extensions"
            if entry.extension not in self.disabled:
                self.guard(entry.extension, "callback ui_settings", entry.fn, ExtensionSettings(self.app.settings,
                                                                                                section))

    def ui_tabs(self) -> list[tuple]:
        """(blocks, title, elem_id) for every tab the extensions add."""
        tabs = []
        for result in self.fire("ui_tabs"):
            tabs += [tuple(t) for t in result if isinstance(t, (tuple, list)) and len(t) >= 2]
        return tabs

    def before_image_saved(self, image, p, infotext: str | None) -> ImageSaveParams:
        params = ImageSaveParams(image, p, None, {"parameters": infotext})
        self.fire("before_image_saved", params)
        return params

    def image_saved(self, params: ImageSaveParams) -> None:
        self.fire("image_saved", params)

    def infotext_pasted(self, infotext: str, params: dict) -> dict:
        self.fire("infotext_pasted", infotext, params)
        return params

    # ---- the denoiser callbacks, on the engine's DenoiserHooks --------------------------------------
    def _total_steps(self) -> int:
        return int(self._job.p.steps) if self._job is not None and self._job.p is not None else 0

    def _cfg_denoiser(self, state: dict) -> None:
        if not self.callbacks.entries("cfg_denoiser"):
            return
        params = CFGDenoiserParams(state["x"], None, state["sigma"], state["step"], self._total_steps(),
                                   state["cond"], state["uncond"])
        self.fire("cfg_denoiser", params)
        state["x"], state["sigma"] = params.x, params.sigma
        state["cond"], state["uncond"] = params.text_cond, params.text_uncond

    def _cfg_denoised(self, state: dict) -> None:
        if not self.callbacks.entries("cfg_denoised"):
            return
        keys = [k for k in ("cond_denoised", "uncond_denoised") if k in state]
        x = torch.cat([state[k] for k in keys])
        params = CFGDenoisedParams(x, state["step"], self._total_steps(), None, state.get("cond_denoised"),
                                   state.get("uncond_denoised"))
        self.fire("cfg_denoised", params)
        if params.x is not x:
            for key, part in zip(keys, params.x.split([state[k].shape[0] for k in keys])):
                state[key] = part
        else:
            for key in keys:
                state[key] = getattr(params, key)

    def _cfg_after_cfg(self, state: dict) -> None:
        if not self.callbacks.entries("cfg_after_cfg"):
            return
        params = AfterCFGCallbackParams(state["x"], state["step"], self._total_steps())
        self.fire("cfg_after_cfg", params)
        state["x"] = params.x


def _replace_func(info: SamplerInfo, func: Callable) -> SamplerInfo:
    return SamplerInfo(info.name, func, info.aliases, info.default_scheduler, dict(info.options),
                       dict(info.defaults))


def component_info(component) -> dict:
    """A1111's script-info arg: label, value, minimum, maximum, step, choices of one component."""
    choices = getattr(component, "choices", None)
    if choices is not None:
        choices = [c[0] if isinstance(c, (tuple, list)) else c for c in choices]
        choices = [str(c) for c in choices]
    return {"label": getattr(component, "label", None), "value": getattr(component, "value", None),
            "minimum": getattr(component, "minimum", None), "maximum": getattr(component, "maximum", None),
            "step": getattr(component, "step", None), "choices": choices}
