"""Settings: every option of `app.settings`, grouped by section; Apply validates all, saves to config.json."""
from __future__ import annotations

import re
from dataclasses import dataclass

import gradio as gr

from ..app import App
from ..engine.errors import EngineError
from ..services.settings import Option
from . import html

# Shown in the bar above the tabs instead (A1111 leaves quicksettings out of this page too).
QUICK_KEYS = frozenset({"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"})
# Read once when the app starts.
# Read when the page is built.
RELOAD_KEYS = frozenset({"default_sampler", "default_scheduler"})


@dataclass
class SettingsTab:
    components: dict[str, gr.components.Component]
    apply: gr.Button
    result: gr.HTML


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _choices(app: App, option: Option) -> list | None:
    if option.key == "default_sampler":
        return app.engine.samplers.names()
    if option.key == "default_scheduler":
        return app.engine.schedules.labels()
    if option.choices is None:
        return None
    return list(option.choices() if callable(option.choices) else option.choices)


def _component(app: App, option: Option):
    value, elem_id = app.settings.get(option.key), f"setting_{option.key}"
    choices = _choices(app, option)
    if option.kind is bool:
        return gr.Checkbox(bool(value), label=option.label, elem_id=elem_id)
    if choices is not None:
        return gr.Dropdown(choices, value=value, label=option.label, elem_id=elem_id, allow_custom_value=True)
    if option.kind in (int, float):
        # No browser-side bounds: the settings service refuses bad values with its own message.
        info = f"{option.minimum:g} – {option.maximum:g}" if option.minimum is not None else None
        return gr.Number(value, label=option.label, info=info, elem_id=elem_id)
    return gr.Textbox(str(value), label=option.label, elem_id=elem_id)


def build(app: App) -> SettingsTab:
    options = [o for o in app.settings.options.values() if o.key not in QUICK_KEYS and not o.hidden]
    sections: dict[str, list[Option]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=200)
        result = gr.HTML("", elem_id="settings_result")
    components: dict[str, gr.components.Component] = {}
    with gr.Tabs(elem_id="settings"):
        for section, members in sections.items():
            with gr.Tab(section, id=f"settings_{_slug(section)}", elem_id=f"settings_section_{_slug(section)}"):
                for option in members:
                    components[option.key] = _component(app, option)
    gr.Markdown(f"Saved in `{app.settings.path}`.")
    tab = SettingsTab(components, apply, result)
    _wire(app, tab)
    return tab


def _wire(app: App, tab: SettingsTab) -> None:
    keys = list(tab.components)

    def apply(*values):
        current = {k: app.settings.get(k) for k in keys}
        changes = {k: _from_form(app.settings.options[k], v) for k, v in zip(keys, values) if v != current[k]}
        if not changes:
            return [gr.skip()] * len(keys) + [html.message("Nothing changed.")]
        try:
            applied = app.settings.update(changes)
        except EngineError as exc:
            return [gr.skip()] * len(keys) + [html.message(f"Not saved: {exc}", "error")]
        return [app.settings.get(k) for k in keys] + [html.message(_applied_text(applied), "ok")]

    tab.apply.click(apply, list(tab.components.values()), list(tab.components.values()) + [tab.result],
                    show_progress="hidden", api_visibility="private", concurrency_limit=None)


def _from_form(option: Option, value):
    """gr.Number gives floats; an int option gets an int when the number is whole, else the float (refused)."""
    if option.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _applied_text(applied: dict) -> str:
    text = f"Saved {len(applied)} setting(s): {', '.join(applied)}."
    reload = sorted(set(applied) & RELOAD_KEYS)
    if reload:
        text += f" Takes effect when the page is reloaded: {', '.join(reload)}."
    return text
