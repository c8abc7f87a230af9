"""The parameter column of txt2img / img2img: sampler, size, batch, CFG, seed (+ Extra), hires fix, init image.

Element ids follow A1111 (`txt2img_steps`, `img2img_seed`, …) because extensions and user scripts look
components up by them.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import App
from ..engine.params import RESIZE_MODES
from .fields import HIRES_UPSCALERS, NO_REFINER, USE_SAME_CHECKPOINT, USE_SAME_SAMPLER


@dataclass
class SeedButtons:
    random_seed: gr.Button
    reuse_seed: gr.Button
    random_subseed: gr.Button
    reuse_subseed: gr.Button


def default_size(app: App) -> tuple[int, int]:
    model = app.engine.models.current
    return app.engine.models.natural_size(model) if model is not None else (512, 512)


def default_sampler(app: App) -> str:
    names = app.engine.samplers.names()
    wanted = app.settings.get("default_sampler")
    return wanted if wanted in names else names[0]


def default_scheduler(app: App) -> str:
    labels = app.engine.schedules.labels()
    wanted = app.settings.get("default_scheduler")
    return wanted if wanted in labels else labels[0]


def build_init_image(tab: str) -> dict:
    image = gr.Image(label="Image for img2img", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                     elem_id=f"{tab}_image", height=360)
    resize = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", elem_id="resize_mode")
    return {"init_image": image, "resize_mode": resize}


def build(app: App, tab: str, hires: bool) -> tuple[dict, SeedButtons]:
    """Create the controls inside the current layout; returns {field name: component} and the seed buttons."""
    f: dict = {}
    width, height = default_size(app)
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(app.engine.samplers.names(), value=default_sampler(app),
                                        label="Sampling method", elem_id=f"{tab}_sampling")
        f["scheduler"] = gr.Dropdown(app.engine.schedules.labels(), value=default_scheduler(app),
                                     label="Schedule type", elem_id=f"{tab}_scheduler")
    f["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            f["width"] = gr.Slider(64, 2048, value=width, step=8, label="Width", elem_id=f"{tab}_width")
            f["height"] = gr.Slider(64, 2048, value=height, step=8, label="Height", elem_id=f"{tab}_height")
        swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", scale=0, min_width=48)
        with gr.Column(scale=2):
            f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
            f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    f["cfg_scale"] = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")
    if not hires:
        f["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                            elem_id=f"{tab}_denoising_strength")
    seeds = _seed_controls(f, tab)
    if hires:
        _hires_controls(f, tab, app)
    _refiner_controls(f, tab, app)
    swap.click(lambda w, h: (h, w), [f["width"], f["height"]], [f["width"], f["height"]],
               show_progress="hidden", api_visibility="private", concurrency_limit=None)
    return f, seeds


def _seed_controls(f: dict, tab: str) -> SeedButtons:
    with gr.Row(equal_height=True, elem_id=f"{tab}_seed_row"):
        f["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", scale=0, min_width=48)
        reuse_seed = gr.Button("♻", elem_id=f"{tab}_reuse_seed", scale=0, min_width=48)
    with gr.Accordion("Extra", open=False, elem_id=f"{tab}_subseed_show"):
        with gr.Row(equal_height=True):
            f["subseed"] = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{tab}_subseed",
                                     scale=4)
            random_subseed = gr.Button("🎲", elem_id=f"{tab}_random_subseed", scale=0, min_width=48)
            reuse_subseed = gr.Button("♻", elem_id=f"{tab}_reuse_subseed", scale=0, min_width=48)
            f["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                              elem_id=f"{tab}_subseed_strength", scale=4)
        with gr.Row():
            f["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                elem_id=f"{tab}_seed_resize_from_w")
            f["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                elem_id=f"{tab}_seed_resize_from_h")
    return SeedButtons(random_seed, reuse_seed, random_subseed, reuse_subseed)


def _checkpoint_names(app: App) -> list[str]:
    return [m.name for m in app.engine.models.checkpoints()]


def _hires_controls(f: dict, tab: str, app: App) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hr"):
        f["enable_hr"] = gr.Checkbox(False, label="Enable Hires. fix", elem_id=f"{tab}_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(list(HIRES_UPSCALERS), value="Latent", label="Upscaler",
                                           elem_id=f"{tab}_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                  elem_id=f"{tab}_hires_steps")
            f["hr_denoising_strength"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                                   elem_id=f"{tab}_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id=f"{tab}_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id=f"{tab}_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id=f"{tab}_hr_resize_y")
        with gr.Row():
            f["hr_checkpoint_name"] = gr.Dropdown([USE_SAME_CHECKPOINT] + _checkpoint_names(app),
                                                  value=USE_SAME_CHECKPOINT, label="Hires checkpoint",
                                                  elem_id=f"{tab}_hr_checkpoint")
            f["hr_sampler_name"] = gr.Dropdown([USE_SAME_SAMPLER] + app.engine.samplers.names(),
                                               value=USE_SAME_SAMPLER, label="Hires sampling method",
                                               elem_id=f"{tab}_hr_sampler")
        f["hr_prompt"] = gr.Textbox(label="Hires prompt (empty: the same)", lines=1, elem_id=f"{tab}_hr_prompt")
        f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt (empty: the same)", lines=1,
                                             elem_id=f"{tab}_hr_neg_prompt")


def _refiner_controls(f: dict, tab: str, app: App) -> None:
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        with gr.Row():
            f["refiner_checkpoint"] = gr.Dropdown([NO_REFINER] + _checkpoint_names(app), value=NO_REFINER,
                                                  label="Checkpoint", elem_id=f"{tab}_refiner_checkpoint")
            f["refiner_switch_at"] = gr.Slider(0.01, 1, value=0.8, step=0.01, label="Switch at",
                                               elem_id=f"{tab}_refiner_switch_at")
