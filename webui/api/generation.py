"""txt2img/img2img over the API: request → GenerationParams → a job on the shared queue → A1111's response."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..engine import depth
from ..engine.errors import CheckpointError, InvalidParameterError
from ..engine.hires import chosen
from ..engine.infotext import parse_infotext
from ..engine.model_files import ModelFile
from ..engine.params import GenerationParams
from ..engine.processing import GenerationResult
from ..engine.sampling.registry import UnknownSamplerError, UnknownScheduleError, resolve_sampler_and_schedule
from ..extensions.scripts import ScriptSelection
from ..services.job_queue import Job, JobStatus
from .context import ApiContext, check_path_setting, coerce_setting
from .errors import ApiError, field_error
from .images import decode_image, encode_image
from .models import GenerationRequest, Img2ImgRequest

log = logging.getLogger(__name__)

API_DEFAULT_SAMPLER = "Euler"   # A1111: sampler_name or sampler_index, whose default is "Euler"

# Fields that change what this app generates; any other field with a non-default value is reported in
# info["ignored_fields"].
SUPPORTED_FIELDS = frozenset({
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps",
    "cfg_scale", "width", "height", "eta", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "send_images", "save_images", "force_task_id", "infotext",
    "do_not_save_samples", "do_not_save_grid", "script_name", "script_args", "alwayson_scripts", "init_images",
    "resize_mode",
    "denoising_strength", "include_init_images", "comments",
    # inpainting, depth, hires fix and refiner (see `_inpaint_params`, `_hires_params`)
    "mask", "mask_blur", "mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", "inpainting_mask_invert", "depth_map", "enable_hr", "hr_scale", "hr_upscaler",
    "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler",
    "hr_prompt", "hr_negative_prompt", "refiner_checkpoint", "refiner_switch_at",
})
SAMPLER_OPTION_FIELDS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")

# infotext key → (request field, type)
INFOTEXT_FIELDS: dict[str, tuple[str, type]] = {
    "Prompt": ("prompt", str), "Negative prompt": ("negative_prompt", str), "Steps": ("steps", int),
    "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str), "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int), "Size-1": ("width", int), "Size-2": ("height", int), "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float), "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int), "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str), "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires sampler": ("hr_sampler_name", str), "Hires schedule type": ("hr_scheduler", str),
    "Hires checkpoint": ("hr_checkpoint_name", str), "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str), "Refiner": ("refiner_checkpoint", str),
    "Refiner switch at": ("refiner_switch_at", float), "Mask blur": ("mask_blur", int),
    "Masked area padding": ("inpaint_full_res_padding", int),
}
HIRES_INFOTEXT_KEYS = ("Hires upscale", "Hires resize-1", "Hires resize-2")


@dataclass
class ModelOverrides:
    """override_settings that need work on the worker: a checkpoint or VAE for this job only (or kept)."""
    checkpoint: ModelFile | None = None
    vae: str | None = None
    restore: bool = True
    settings: dict[str, Any] = field(default_factory=dict)  # other known settings; saved when not restoring


@dataclass
class PreparedJob:
    kind: str
    params: GenerationParams
    overrides: ModelOverrides
    save: bool
    send_images: bool
    job_id: str | None
    echo: dict[str, Any]
    ignored: list[str]
    scripts: ScriptSelection | None = None


# ---- request → params ----------------------------------------------------------------------------

def prepare(api: ApiContext, req: GenerationRequest, kind: str) -> PreparedJob:
    """Check everything that can be checked before queueing; raise 422s naming the field."""
    values = _with_infotext(req, api.app.extensions)
    scripts, unknown_scripts = _scripts(api, values, kind)
    overrides, clip_skip, ignored_settings = _overrides(api, values.get("override_settings"),
                                                       values.get("override_settings_restore_afterwards") is not False)
    params = _params(api, values, kind, clip_skip)
    _check_sampler(api, params, values)
    params.validate(img2img=kind == "img2img")
    _check_depth(api, params, overrides, kind)
    return PreparedJob(kind=kind, params=params, overrides=overrides, save=bool(values.get("save_images")),
                       send_images=values.get("send_images") is not False, job_id=values.get("force_task_id"),
                       echo=_echo(req), ignored=_ignored(req) + ignored_settings + unknown_scripts, scripts=scripts)


def _scripts(api: ApiContext, values: dict[str, Any], kind: str) -> tuple[ScriptSelection, list[str]]:
    """script_name/script_args and alwayson_scripts ({title: {"args": [...]}}), checked against the tab's scripts.
    An unknown script_name is a 422; always-on scripts this app lacks are skipped and reported as ignored
    (clients send args for extensions such as ControlNet whether or not the server has them)."""
    runner = api.app.extensions.runner(kind)
    name = values.get("script_name")
    if name and runner.find(name, alwayson=False) is None:
        raise field_error("script_name", f"no script named {name!r}; available: {', '.join(runner.titles()) or 'none'}")
    alwayson, unknown = {}, []
    for title, body in (values.get("alwayson_scripts") or {}).items():
        if runner.find(title, alwayson=True) is None:
            log.info("alwayson_scripts: no always-on script named %r; ignored", title)
            unknown.append(title)
            continue
        args = body.get("args", []) if isinstance(body, dict) else body
        if not isinstance(args, list):
            raise field_error(f"alwayson_scripts.{title}.args", "must be a list")
        alwayson[title] = args
    selection = ScriptSelection(name or None, list(values.get("script_args") or []), alwayson)
    return selection, ["alwayson_scripts"] if unknown else []


def _with_infotext(req: GenerationRequest, extensions=None) -> dict[str, Any]:
    """The request's values, with fields the client did not set taken from `infotext` (as A1111 does)."""
    values = req.model_dump()
    text = values.get("infotext")
    if not text:
        return values
    explicit = req.model_fields_set
    parsed = parse_infotext(text, fill_defaults=False)
    if extensions is not None:
        parsed = extensions.infotext_pasted(text, parsed)
    for key, (name, typ) in INFOTEXT_FIELDS.items():
        if key not in parsed or name in explicit:
            continue
        if name == "sampler_name" and "sampler_index" in explicit:
            continue
        try:
            values[name] = typ(parsed[key])
        except (TypeError, ValueError):
            raise field_error("infotext", f"{key}: cannot read {parsed[key]!r} as {typ.__name__}") from None
    if "enable_hr" in values and "enable_hr" not in explicit and any(k in parsed for k in HIRES_INFOTEXT_KEYS):
        values["enable_hr"] = True
    if "Clip skip" in parsed:
        settings = dict(values.get("override_settings") or {})
        settings.setdefault("CLIP_stop_at_last_layers", parsed["Clip skip"])
        values["override_settings"] = settings
    return values


def _value(values: dict[str, Any], name: str, default: Any) -> Any:
    value = values.get(name)
    return default if value is None else value


def _params(api: ApiContext, values: dict[str, Any], kind: str, clip_skip: int) -> GenerationParams:
    d = GenerationParams()
    p = GenerationParams(
        prompt=_value(values, "prompt", ""), negative_prompt=_value(values, "negative_prompt", ""),
        steps=_value(values, "steps", 50),
        sampler_name=values.get("sampler_name") or _value(values, "sampler_index", API_DEFAULT_SAMPLER),
        scheduler=values.get("scheduler") or "Automatic", cfg_scale=_value(values, "cfg_scale", d.cfg_scale),
        width=_value(values, "width", d.width), height=_value(values, "height", d.height),
        seed=_value(values, "seed", -1), subseed=_value(values, "subseed", -1),
        subseed_strength=_value(values, "subseed_strength", 0.0),
        seed_resize_from_w=max(0, _value(values, "seed_resize_from_w", 0)),
        seed_resize_from_h=max(0, _value(values, "seed_resize_from_h", 0)),
        batch_size=_value(values, "batch_size", 1), n_iter=_value(values, "n_iter", 1), clip_skip=clip_skip,
        sampler_options={k: values[k] for k in SAMPLER_OPTION_FIELDS if values.get(k) is not None},
    )
    if kind == "img2img":
        p.denoising_strength = _value(values, "denoising_strength", 0.75)
        p.resize_mode = _value(values, "resize_mode", 0)
        p.init_images = _init_images(api, values)
        p.batch_size = _batch_for_images(len(p.init_images), p.batch_size)
        _inpaint_params(api, values, p)
    else:
        _hires_params(api, values, p)
    _refiner_params(api, values, p)
    if values.get("depth_map"):
        p.depth_map = decode_image(values["depth_map"], "depth_map", api.app.settings.get("img_max_pixels"))
    return p


def _inpaint_params(api: ApiContext, values: dict[str, Any], p: GenerationParams) -> None:
    """A1111's API defaults differ from its UI: fill, "only masked" and padding 0."""
    if not values.get("mask"):
        return
    p.mask = decode_image(values["mask"], "mask", api.app.settings.get("img_max_pixels"))
    blur = values.get("mask_blur")
    p.mask_blur_x = blur if blur is not None else _value(values, "mask_blur_x", 4)
    p.mask_blur_y = blur if blur is not None else _value(values, "mask_blur_y", 4)
    p.mask_round = values.get("mask_round") is not False
    p.inpainting_fill = _value(values, "inpainting_fill", 0)
    p.inpaint_full_res = values.get("inpaint_full_res") is not False
    p.inpaint_full_res_padding = _value(values, "inpaint_full_res_padding", 0)
    p.inpainting_mask_invert = bool(_value(values, "inpainting_mask_invert", 0))


def _hires_params(api: ApiContext, values: dict[str, Any], p: GenerationParams) -> None:
    if not values.get("enable_hr"):
        return
    p.enable_hr = True
    p.denoising_strength = _value(values, "denoising_strength", 0.75)
    p.hr_scale = _value(values, "hr_scale", 2.0)
    p.hr_upscaler = values.get("hr_upscaler") or "Latent"
    p.hr_second_pass_steps = _value(values, "hr_second_pass_steps", 0)
    p.hr_resize_x = _value(values, "hr_resize_x", 0)
    p.hr_resize_y = _value(values, "hr_resize_y", 0)
    p.hr_prompt = _value(values, "hr_prompt", "")
    p.hr_negative_prompt = _value(values, "hr_negative_prompt", "")
    p.hr_sampler_name, p.hr_scheduler = chosen(values.get("hr_sampler_name")), chosen(values.get("hr_scheduler"))
    name = chosen(values.get("hr_checkpoint_name"))
    p.hr_checkpoint_name = api.resolve_checkpoint(name, "hr_checkpoint_name").name if name else None
    if p.hr_sampler_name or p.hr_scheduler:
        engine = api.app.engine
        try:
            resolve_sampler_and_schedule(engine.samplers, engine.schedules, p.hr_sampler_name or p.sampler_name,
                                         p.hr_scheduler or p.scheduler)
        except UnknownSamplerError as exc:
            raise field_error("hr_sampler_name", str(exc)) from None
        except UnknownScheduleError as exc:
            raise field_error("hr_scheduler", str(exc)) from None


def _refiner_params(api: ApiContext, values: dict[str, Any], p: GenerationParams) -> None:
    name = chosen(values.get("refiner_checkpoint"))
    if not name:
        return
    p.refiner_checkpoint = api.resolve_checkpoint(name, "refiner_checkpoint").name
    p.refiner_switch_at = _value(values, "refiner_switch_at", 0.8)


def _batch_for_images(n_images: int, batch_size: Any) -> Any:
    """A1111: one init image serves the whole batch; several set the batch size, at most batch_size."""
    if n_images == 1 or not isinstance(batch_size, int):
        return batch_size
    if n_images > batch_size:
        raise field_error("init_images", f"{n_images} images for batch_size {batch_size}; send at most batch_size "
                                         "images, or one for the whole batch")
    return n_images


def _init_images(api: ApiContext, values: dict[str, Any]) -> list:
    images = values.get("init_images") or []
    if not images:
        raise field_error("init_images", "img2img needs at least one base64 image")
    max_pixels = api.app.settings.get("img_max_pixels")
    decoded = [decode_image(data, f"init_images.{i}", max_pixels).convert("RGB") for i, data in enumerate(images)]
    return decoded


def _check_depth(api: ApiContext, params: GenerationParams, overrides: "ModelOverrides", kind: str) -> None:
    """Depth problems that can be seen before queueing (when the job runs on the loaded checkpoint)."""
    model = api.app.engine.models.current
    if overrides.checkpoint is not None or model is None:
        return
    if params.depth_map is not None and not depth.is_depth_model(model):
        raise field_error("depth_map", f"{model.name} is {model.family.label}, not a depth model (SD 2 depth)")
    if (kind == "img2img" and params.depth_map is None and depth.is_depth_model(model)
            and api.app.engine.depth.describe(model) is None):
        raise field_error("depth_map", depth.no_estimator_message(api.app.engine.depth.depth_dir))


def _check_sampler(api: ApiContext, params: GenerationParams, values: dict[str, Any]) -> None:
    engine = api.app.engine
    try:
        resolve_sampler_and_schedule(engine.samplers, engine.schedules, params.sampler_name, params.scheduler)
    except UnknownSamplerError as exc:
        raise field_error("sampler_name" if values.get("sampler_name") else "sampler_index", str(exc)) from None
    except UnknownScheduleError as exc:
        raise field_error("scheduler", str(exc)) from None


def _overrides(api: ApiContext, settings: dict[str, Any] | None, restore: bool
               ) -> tuple[ModelOverrides, int, list[str]]:
    app = api.app
    out = ModelOverrides(restore=restore)
    clip_skip = app.settings.get("CLIP_stop_at_last_layers")
    ignored = []
    for key, value in (settings or {}).items():
        name = f"override_settings.{key}"
        if key == "sd_model_checkpoint":
            out.checkpoint = api.resolve_checkpoint(value, name)
        elif key == "sd_vae":
            out.vae = api.check_vae(value, name)
        elif key in app.settings.options:
            check_path_setting(app, key, name, admin=False)
            checked = coerce_setting(app, key, value, name)
            if key == "CLIP_stop_at_last_layers":
                clip_skip = checked
            out.settings[key] = checked
        else:
            ignored.append(name)
    return out, clip_skip, ignored


def _ignored(req: GenerationRequest) -> list[str]:
    """Fields given with a non-default value that this app does not act on yet."""
    out = []
    for name, info in type(req).model_fields.items():
        if name in SUPPORTED_FIELDS or name not in req.model_fields_set:
            continue
        value = getattr(req, name)
        default = info.get_default(call_default_factory=True)
        if value is not None and value != default and value not in ("", [], {}):
            out.append(name)
    return out + sorted(req.model_extra or {})


def _echo(req: GenerationRequest) -> dict[str, Any]:
    """A1111 echoes the request in `parameters`, without the (large) images unless include_init_images."""
    echo = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        echo["init_images"] = None
        echo["mask"] = None
        echo["depth_map"] = None
    return echo


# ---- running on the worker -----------------------------------------------------------------------

def submit(api: ApiContext, job: PreparedJob, owner: str = "api") -> Job:
    meta = {"n_iter": job.params.n_iter, "batch_size": job.params.batch_size, "api": True}
    return api.app.submit(job.kind, job.params, owner=owner, save=job.save, job_id=job.job_id,
                          around=lambda: _prepared_model(api, job.overrides), meta=meta, scripts=job.scripts)


@contextmanager
def _prepared_model(api: ApiContext, ov: ModelOverrides) -> Iterator[None]:
    with _model_overrides(api, ov):
        api.ensure_model()
        yield


@contextmanager
def _model_overrides(api: ApiContext, ov: ModelOverrides) -> Iterator[None]:
    models = api.app.engine.models
    previous = models.current.file if models.current is not None else api.last_checkpoint
    previous_vae = models.vae_choice
    try:
        if ov.vae is not None and ov.vae != previous_vae:
            api.app.engine.set_vae(ov.vae)
        if ov.checkpoint is not None and (models.current is None or models.current.file.path != ov.checkpoint.path):
            api.load(ov.checkpoint)
        yield
    finally:
        if ov.restore:
            _restore(api, previous, previous_vae)
    if not ov.restore:
        _persist(api, ov)


def _restore(api: ApiContext, checkpoint: ModelFile | None, vae: str) -> None:
    models = api.app.engine.models
    try:
        if models.vae_choice != vae:
            api.app.engine.set_vae(vae)
        if checkpoint is not None and (models.current is None or models.current.file.path != checkpoint.path):
            api.load(checkpoint)
    except (CheckpointError, InvalidParameterError) as exc:
        log.error("could not restore the model after override_settings: %s", exc)


def _persist(api: ApiContext, ov: ModelOverrides) -> None:
    changes = dict(ov.settings)
    if ov.vae is not None:
        changes["sd_vae"] = ov.vae
    api.app.settings.update(changes)
    if ov.checkpoint is not None:
        api.remember_checkpoint_setting()


# ---- job → response ------------------------------------------------------------------------------

def response(api: ApiContext, prepared: PreparedJob, job: Job) -> dict[str, Any]:
    if job.status is JobStatus.CANCELLED:
        raise ApiError(409, f"job {job.id} was cancelled before it started", kind="JobCancelled")
    if isinstance(job.exception, InvalidParameterError):   # e.g. a script refusing its script_args on the worker
        raise field_error(job.exception.field, str(job.exception))
    if job.status is JobStatus.FAILED or job.result is None:
        raise ApiError(500, f"generation failed (job {job.id}): {job.error}", kind="GenerationError")
    result: GenerationResult = job.result
    fmt = prepared.overrides.settings.get("samples_format") or api.app.settings.get("samples_format")
    images = [encode_image(im, fmt, text) for im, text in zip(result.images, result.infotexts)] \
        if prepared.send_images else []
    info = dict(result.info)
    if prepared.ignored:
        info["ignored_fields"] = prepared.ignored
    return {"images": images, "parameters": prepared.echo, "info": json.dumps(info, default=str)}
