"""Request and response models of the /sdapi/v1 API, with A1111's field names and defaults.

Every generation field is optional and may be null (null means "the default"). Types are checked here
(a wrong type is a 422 naming the field); value ranges are checked once, by `GenerationParams.validate`.
Fields this app does not implement yet are accepted and reported back in `info["ignored_fields"]`.
`depth_map` is this app's own addition (A1111 has no way to send one).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    """Unknown fields are accepted (clients send fields of newer A1111 versions and of extensions)."""
    model_config = ConfigDict(extra="allow")


class GenerationRequest(_Lenient):
    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = Field(1, description="batch count")
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str | None = Field("Euler", description="legacy name of sampler_name")
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = Field(None, description="fills every field not given explicitly")
    force_task_id: str | None = Field(None, description="job id, for /internal/progress and /sdapi/v1/jobs/{id}")
    depth_map: str | None = Field(None, description="base64 depth map for SD 2 depth checkpoints (white = near); "
                                                    "img2img estimates one when it is left out")


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] | None = Field(None, description="base64 images, with or without a data: prefix")
    resize_mode: int | None = Field(0, description="0 Just resize, 1 Crop and resize, 2 Resize and fill")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask, white = change; a mask with transparency uses its "
                                               "alpha (opaque = change). Must have the init image's size")
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool | None = Field(True, description="True: only masked (crop + padding, pasted back)")
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, description="echo init_images and mask in `parameters`")


class GenerationResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 images, with the infotext embedded")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seed, all_seeds, infotexts, sd_model_name, ...")


# ---- progress and jobs ---------------------------------------------------------------------------

class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 for the running job")
    eta_relative: float = Field(description="seconds left")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG preview of the running job")
    textinfo: str | None = None


class TaskProgressRequest(BaseModel):
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class TaskProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = Field(None, description="data: URI of the preview")
    id_live_preview: int | None = None
    textinfo: str | None = None


class JobInfo(BaseModel):
    id: str
    kind: str
    status: str
    position: int | None = Field(None, description="0 running, 1.. waiting, null finished")
    progress: float
    step: int
    total_steps: int
    eta: float | None = None
    error: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None


class Empty(BaseModel):
    pass


# ---- settings and lists --------------------------------------------------------------------------

class OptionsUpdateResponse(BaseModel):
    updated: list[str]
    ignored: list[str] = Field(description="keys that are not settings of this app")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
    pickle: bool = Field(False, description="a .ckpt/.pt/.bin file: read tensors-only, never unpickled freely")


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str | None = None
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, dict[str, Any]] = Field(default_factory=dict)
    skipped: dict[str, dict[str, Any]] = Field(default_factory=dict)


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    name: str
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    version: str = ""
    commit_date: int | str = ""
    enabled: bool = True


class NamedItem(BaseModel):
    name: str
    path: str | None = None


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free, used, total (bytes)")
    cuda: dict[str, Any] = Field(description="system, active, allocated, reserved, inactive, events; or error")


# ---- images --------------------------------------------------------------------------------------

class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 image")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="the infotext")
    items: dict[str, Any] = Field(default_factory=dict, description="other metadata of the image")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the parsed infotext")


class ExtrasBaseRequest(_Lenient):
    resize_mode: Literal[0, 1] = Field(0, description="0 scale by upscaling_resize, 1 resize to w x h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field(description="base64 image")


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]
