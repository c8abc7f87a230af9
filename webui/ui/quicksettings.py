"""The bar above the tabs: checkpoint (with refresh), VAE and clip skip, as A1111's quicksettings row."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import App
from ..engine.errors import EngineError
from ..engine.model_manager import VAE_AUTOMATIC, VAE_NONE
from . import html


@dataclass
class QuickSettings:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    clip_skip: gr.Slider
    status: gr.HTML


def checkpoint_choices(app: App) -> list[tuple[str, str]]:
    """(label, value) pairs: A1111's 'name [hash]' titles shown, the stable file name as the value."""
    models = app.engine.models
    return [(models.title(f), f.name) for f in models.checkpoints()]


def current_checkpoint(app: App) -> str | None:
    model = app.engine.models.current
    return model.file.name if model is not None else None


def vae_choices(app: App) -> list[str]:
    return [VAE_AUTOMATIC, VAE_NONE] + [v.name for v in app.engine.models.vaes()]


def build(app: App) -> QuickSettings:
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(checkpoint_choices(app), value=current_checkpoint(app), label="Stable Diffusion checkpoint",
                                 elem_id="setting_sd_model_checkpoint", scale=4, min_width=240)
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=48,
                            elem_classes=["tool"])
        vae = gr.Dropdown(vae_choices(app), value=app.engine.models.vae_choice, label="SD VAE",
                          elem_id="setting_sd_vae", scale=2, min_width=160)
        clip_skip = gr.Slider(1, 12, value=int(app.settings.get("CLIP_stop_at_last_layers")), step=1,
                              label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", scale=2, min_width=160)
    status = gr.HTML(model_status(app), elem_id="quicksettings_status")
    qs = QuickSettings(checkpoint, refresh, vae, clip_skip, status)
    _wire(app, qs)
    return qs


def _wire(app: App, qs: QuickSettings) -> None:
    common = dict(api_visibility="private", concurrency_limit=None)

    def change_checkpoint(name: str):
        try:
            model = app.engine.load_checkpoint(name)
            app.settings.update({"sd_model_checkpoint": model.file.name})
        except EngineError as exc:
            return gr.update(value=current_checkpoint(app)), html.message(f"Could not load {name}: {exc}", "error")
        return gr.update(choices=checkpoint_choices(app), value=model.file.name), html.message(
            f"Loaded {model.file.name}", "ok")

    def change_vae(choice: str):
        try:
            app.engine.set_vae(choice)
            app.settings.update({"sd_vae": choice})
        except EngineError as exc:
            return gr.update(value=app.engine.models.vae_choice), html.message(f"Could not use VAE {choice}: {exc}", "error")
        return gr.update(), html.message(f"VAE: {choice}", "ok")

    def change_clip_skip(value: float):
        try:
            app.settings.update({"CLIP_stop_at_last_layers": int(value)})
        except EngineError as exc:
            return html.message(str(exc), "error")
        return ""

    def refresh():
        app.engine.models.refresh()
        return (gr.update(choices=checkpoint_choices(app), value=current_checkpoint(app)),
                gr.update(choices=vae_choices(app), value=app.engine.models.vae_choice), "")

    # .input fires on user changes only, so programmatic updates (refresh, page load) do not reload models.
    qs.checkpoint.input(change_checkpoint, qs.checkpoint, [qs.checkpoint, qs.status], show_progress="minimal",
                        **common)
    qs.vae.input(change_vae, qs.vae, [qs.vae, qs.status], show_progress="minimal", **common)
    qs.clip_skip.input(change_clip_skip, qs.clip_skip, qs.status, show_progress="hidden", trigger_mode="always_last",
                       **common)
    qs.refresh.click(refresh, None, [qs.checkpoint, qs.vae, qs.status], show_progress="hidden", **common)


def model_status(app: App) -> str:
    """A plain warning while no checkpoint is loaded, saying where to put one."""
    if app.engine.models.current is not None:
        return ""
    folder = app.engine.paths.ckpt_dir
    return html.message(f"No checkpoint is loaded. Put a .safetensors checkpoint in {folder}, press 🔄 and "
                        "pick it above.", "error")


def on_page_load(app: App):
    """Another browser or the API may have switched models since this page was built."""
    return (gr.update(choices=checkpoint_choices(app), value=current_checkpoint(app)),
            gr.update(choices=vae_choices(app), value=app.engine.models.vae_choice), model_status(app))
