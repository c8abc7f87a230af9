"""A1111's `modules.shared`: `opts`, `state`, `cmd_opts`, `OptionInfo`, `sd_model`, bound to the running App.

- `opts.<key>` reads a setting (extension options included); `opts.<key> = v` / `opts.set(key, v)` validate,
  apply and save it. `opts.add_option(key, OptionInfo(...))` adds an option shown in Settings.
  `opts.data` is a snapshot dict of all values; `opts.onchange(key, fn)` calls fn() after the key changes.
- `state` reflects the job running on the queue: `interrupted`, `skipped`, `job_count`, `sampling_step`,
  `sampling_steps`; `interrupt()` / `skip()` act on it. Other A1111 fields can be written and are ignored.
- `cmd_opts.<flag>` is the parsed command line (flags added by `preload.py` included), with A1111 defaults
  for a few flags this app lacks.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from . import _bridge

log = logging.getLogger(__name__)

# sd_model and device are looked up lazily (module __getattr__), so not in __all__
__all__ = ["opts", "state", "cmd_opts", "OptionInfo", "OptionHTML", "demo"]


class OptionInfo:
    """A1111's option description; the Gradio component is not used (Settings picks the widget from the type)."""

    def __init__(self, default: Any = None, label: str = "", component: Any = None,
                 component_args: dict | Callable | None = None, onchange: Callable | None = None,
                 section: tuple | None = None, refresh: Callable | None = None, comment_before: str = "",
                 comment_after: str = "", infotext: str | None = None, restrict_api: bool = False,
                 category_id: str | None = None):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.onchange, self.section = component_args, onchange, section
        self.refresh, self.comment_before, self.comment_after = refresh, comment_before, comment_after
        self.infotext, self.restrict_api, self.category_id = infotext, restrict_api, category_id
        self.do_not_save = False

    def info(self, text: str) -> "OptionInfo":
        self.comment_after += f" ({text})"
        return self

    def html(self, html: str) -> "OptionInfo":
        self.comment_after += html
        return self

    def link(self, label: str, url: str) -> "OptionInfo":
        self.comment_before += f"[{label}]({url})"
        return self

    def needs_restart(self) -> "OptionInfo":
        self.comment_after += " (requires restart)"
        return self

    def needs_reload_ui(self) -> "OptionInfo":
        self.comment_after += " (requires Reload UI)"
        return self


class OptionHTML(OptionInfo):
    def __init__(self, text: str):
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def _option(key: str, info: OptionInfo):
    from webui.services.settings import Option

    args = info.component_args() if callable(info.component_args) else (info.component_args or {})
    default = info.default
    kind = type(default) if type(default) in (bool, int, float, str) else list if isinstance(default, (list, tuple)) else str
    if kind is int and isinstance(args.get("step"), float):
        kind = float
    choices = args.get("choices")
    choices = tuple(c[0] if isinstance(c, (tuple, list)) else c for c in choices) if isinstance(choices, (list, tuple)) else None
    section = info.section[1] if isinstance(info.section, (tuple, list)) and len(info.section) > 1 else \
        (_bridge.extension_name() or "Extensions")
    label = info.label + (f" {info.comment_after.strip()}" if info.comment_after.strip() else "")
    return Option(key, list(default) if kind is list else default, label, section, kind, args.get("minimum"),
                  args.get("maximum"), choices if kind is not list else None)


class _Options:
    """A1111's `shared.opts` over this app's Settings."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return _bridge.app().settings.get(key)
        except KeyError:
            raise AttributeError(f"no setting {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        _bridge.app().settings.update({key: value})
        return True

    def get_default(self, key: str) -> Any:
        option = _bridge.app().settings.options.get(key)
        return option.default if option is not None else None

    @property
    def data(self) -> dict[str, Any]:
        return _bridge.app().settings.as_dict()

    @property
    def data_labels(self) -> dict[str, OptionInfo]:
        return {k: OptionInfo(o.default, o.label, section=(o.section, o.section))
                for k, o in _bridge.app().settings.options.items()}

    def add_option(self, key: str, info: OptionInfo) -> None:
        if info.do_not_save:
            return   # A1111's OptionHTML: text on the Settings page; not supported, nothing to store
        _bridge.app().settings.add_options([_option(key, info)])

    def onchange(self, key: str, func: Callable, call: bool = True) -> None:
        def listener(changed: dict) -> None:
            if key in changed:
                try:
                    func()
                except Exception:
                    log.exception("onchange handler for setting %s failed", key)
        _bridge.app().settings.on_change(listener)
        if call:
            func()

    def save(self, filename: str | None = None) -> None:
        _bridge.app().settings.save()

    def __contains__(self, key: str) -> bool:
        return key in _bridge.app().settings.as_dict()


class _State:
    """A1111's `shared.state`, read from the job running on the app's queue."""

    _ignored = ("job", "job_no", "job_timestamp", "textinfo", "current_image", "current_latent",
                "current_image_sampling_step", "id_live_preview", "time_start", "server_start", "skipped_reason")

    def __init__(self) -> None:
        object.__setattr__(self, "_scratch", {})

    def _job(self):
        found = _bridge.app_or_none()
        return found.queue.current() if found is not None else None

    @property
    def interrupted(self) -> bool:
        job = self._job()
        return bool(job and job.control.interrupted)

    @property
    def skipped(self) -> bool:
        job = self._job()
        return bool(job and job.control.skipped)

    @property
    def stopping_generation(self) -> bool:
        return self.interrupted

    @property
    def job_count(self) -> int:
        job = self._job()
        return int(job.meta.get("n_iter", 1)) if job is not None else 0

    @property
    def sampling_step(self) -> int:
        job = self._job()
        return job.step if job is not None else 0

    @property
    def sampling_steps(self) -> int:
        job = self._job()
        return job.total_steps if job is not None else 0

    def interrupt(self) -> None:
        job = self._job()
        if job is not None:
            _bridge.app().queue.interrupt(job.id)

    def skip(self) -> None:
        job = self._job()
        if job is not None:
            _bridge.app().queue.skip(job.id)

    def __getattr__(self, key: str) -> Any:
        scratch = object.__getattribute__(self, "_scratch")
        if key in scratch:
            return scratch[key]
        if key in self._ignored:
            return None
        raise AttributeError(f"shared.state has no {key!r} in this app")

    def __setattr__(self, key: str, value: Any) -> None:
        # scripts write job/job_count/sampling_step for A1111's progress bar; this app tracks progress itself
        self._scratch[key] = value

    # A1111's per-job calls: no-ops here (the queue tracks jobs)
    def begin(self, job: str = "(unknown)") -> None: ...
    def end(self) -> None: ...
    def nextjob(self) -> None: ...
    def set_current_image(self) -> None: ...
    def assign_current_image(self, image) -> None: ...


# A1111 flags this app does not define, with A1111's defaults
_CMD_DEFAULTS = {"lowvram": False, "medvram": False, "medvram_sdxl": False, "no_half": False, "no_half_vae": False,
                 "precision": "autocast", "upcast_sampling": False, "share": False, "listen": False, "api": False,
                 "nowebui": False, "xformers": False, "opt_sdp_attention": False, "disable_safe_unpickle": False,
                 "hide_ui_dir_config": False, "freeze_settings": False, "skip_install": False, "use_cpu": [],
                 "disable_extension_access": False, "do_not_download_clip": False}


class _CmdOpts:
    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        found = _bridge.app_or_none()
        args = getattr(found, "args", None) if found is not None else None
        if args is not None and hasattr(args, key):
            return getattr(args, key)
        if key in _CMD_DEFAULTS:
            return _CMD_DEFAULTS[key]
        raise AttributeError(f"no command-line option {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        found = _bridge.app()
        if found.args is not None:
            setattr(found.args, key, value)


opts = _Options()
state = _State()
cmd_opts = _CmdOpts()
demo = None


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "sd_model":
        found = _bridge.app_or_none()
        return found.engine.models.current if found is not None else None
    if name == "device":
        return _bridge.app().engine.devices.device
    raise AttributeError(f"module 'modules.shared' has no attribute {name!r} (not supported by this app)")
