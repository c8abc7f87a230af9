"""The A1111-compatible HTTP API (`/sdapi/v1/...` and `/internal/progress`), mounted on the server's FastAPI app.

Routes are thin: they convert between the typed models (models.py) and the modules that do the work.
Generation runs as jobs on the app's shared FIFO queue; the request waits for its own job.
"""
from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..app import App
from ..security.owners import requester_of
from ..services.job_queue import JobForbidden
from . import extras, generation, listings
from . import models as m
from . import progress as prog
from .context import MODEL_JOB, ApiContext, check_path_setting, coerce_setting, wait_for
from .errors import ApiError, ApiRoute
from .images import decode_image
from .pnginfo import png_info

PREFIX = "/sdapi/v1"


def mount_api(server: FastAPI, app: App) -> None:
    api = ApiContext(app)
    router = APIRouter(route_class=ApiRoute)
    _generation_routes(router, api)
    _progress_routes(router, api)
    _settings_routes(router, api)
    _list_routes(router, api)
    _model_routes(router, api)
    _image_routes(router, api)
    server.include_router(router)


def _generation_routes(router: APIRouter, api: ApiContext) -> None:
    async def run(req: m.GenerationRequest, kind: str, request: Request) -> dict[str, Any]:
        prepared = await run_in_threadpool(generation.prepare, api, req, kind)
        job = generation.submit(api, prepared, owner=requester_of(request).owner)
        await wait_for(job)
        return await run_in_threadpool(generation.response, api, prepared, job)

    @router.post(f"{PREFIX}/txt2img", response_model=m.GenerationResponse, tags=["generation"])
    async def txt2img(req: m.Txt2ImgRequest, request: Request) -> dict[str, Any]:
        """Generate from a prompt. Waits for the job; `force_task_id` names it for /internal/progress."""
        return await run(req, "txt2img", request)

    @router.post(f"{PREFIX}/img2img", response_model=m.GenerationResponse, tags=["generation"])
    async def img2img(req: m.Img2ImgRequest, request: Request) -> dict[str, Any]:
        """Generate from init_images and a prompt."""
        return await run(req, "img2img", request)


def _progress_routes(router: APIRouter, api: ApiContext) -> None:
    app = api.app

    @router.get(f"{PREFIX}/progress", response_model=m.ProgressResponse, tags=["jobs"])
    def progress(request: Request, skip_current_image: bool = Query(False)) -> dict[str, Any]:
        """Progress of the running job, whoever started it (A1111's global state). Under auth, its live
        preview is shown only to the job's owner and admins."""
        current = app.queue.current()
        who = requester_of(request)
        private = current is not None and who.authenticated and not who.may_control(current.owner)
        return prog.progress(app, skip_current_image or private)

    @router.post(f"{PREFIX}/interrupt", response_model=m.Empty, tags=["jobs"])
    def interrupt(request: Request) -> dict:
        """Stop the running job after its current step; it returns what it finished. Under auth, admins only
        (others stop their own jobs with /jobs/{id}/interrupt)."""
        _global_control(request, app.queue.interrupt, "interrupt")
        return {}

    @router.post(f"{PREFIX}/skip", response_model=m.Empty, tags=["jobs"])
    def skip(request: Request) -> dict:
        """Skip the current batch of the running job (under auth: admins only)."""
        _global_control(request, app.queue.skip, "skip")
        return {}

    @router.get(f"{PREFIX}/jobs/{{job_id}}", response_model=m.JobInfo, tags=["jobs"])
    def job_status(job_id: str) -> dict[str, Any]:
        """One job's status and progress (this app's extension)."""
        return prog.job_info(app, app.queue.get(job_id))

    @router.post(f"{PREFIX}/jobs/{{job_id}}/interrupt", response_model=m.JobInfo, tags=["jobs"])
    def job_interrupt(job_id: str, request: Request) -> dict[str, Any]:
        """Interrupt this job only (a queued one is cancelled). Only its owner or an admin may."""
        _control(request, app.queue.interrupt, job_id)
        return prog.job_info(app, app.queue.get(job_id))

    @router.post(f"{PREFIX}/jobs/{{job_id}}/cancel", response_model=m.JobInfo, tags=["jobs"])
    def job_cancel(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel this job: removed from the queue if waiting, interrupted if running. Only its owner or an admin may."""
        _control(request, app.queue.cancel, job_id)
        return prog.job_info(app, app.queue.get(job_id))

    @router.post("/internal/progress", response_model=m.TaskProgressResponse, tags=["jobs"])
    def task_progress(req: m.TaskProgressRequest) -> dict[str, Any]:
        """Progress and live preview of one job, by the id given as force_task_id."""
        return prog.task_progress(app, req.id_task, req.id_live_preview, req.live_preview)


def _global_control(request: Request, action: Callable[..., None], name: str) -> None:
    """A1111's global controls act on whatever job runs: anyone's without a login, admins' only under auth."""
    who = requester_of(request)
    if who.authenticated and not who.admin:
        raise ApiError(403, f"only an admin may {name} whatever job is running; use /sdapi/v1/jobs/{{id}}/"
                            f"{'interrupt' if name == 'interrupt' else 'cancel'} for your own jobs", kind="Forbidden")
    action(None, owner=None)


def _control(request: Request, action: Callable[..., None], job_id: str) -> None:
    """A queue control by job id on behalf of the requester: on their own jobs only, unless they are an admin."""
    who = requester_of(request)
    owner = who.owner_filter()
    try:
        action(job_id, owner=owner)
    except JobForbidden as exc:
        raise ApiError(403, str(exc), kind="Forbidden") from None


def _settings_routes(router: APIRouter, api: ApiContext) -> None:
    app = api.app

    @router.get(f"{PREFIX}/options", response_model=dict[str, Any], tags=["settings"])
    def get_options() -> dict[str, Any]:
        return listings.options(api)

    @router.post(f"{PREFIX}/options", response_model=m.OptionsUpdateResponse, tags=["settings"])
    async def set_options(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Change settings. `sd_model_checkpoint` and `sd_vae` switch the model (queued after earlier jobs).
        Output folders change only from the server's own machine, or by an admin."""
        checkpoint = vae = None
        plain, ignored = {}, []
        admin = requester_of(request).admin
        for key, value in body.items():
            check_path_setting(app, key, key, admin)
            if key == "sd_model_checkpoint":
                checkpoint = api.resolve_checkpoint(value, key)
            elif key == "sd_vae":
                vae = api.check_vae(value, key)
            elif key in app.settings.options:
                plain[key] = coerce_setting(app, key, value, key)
            else:
                ignored.append(key)
        app.settings.update(plain)
        if "queue_max_size" in plain and hasattr(app.queue, "max_size"):
            app.queue.max_size = plain["queue_max_size"]   # the bound applies from the next submission
        if checkpoint is not None or vae is not None:
            await api.run_task(MODEL_JOB, lambda: _switch(api, checkpoint, vae))
        updated = list(plain) + [k for k, v in (("sd_model_checkpoint", checkpoint), ("sd_vae", vae)) if v]
        return {"updated": updated, "ignored": ignored}

    @router.get(f"{PREFIX}/cmd-flags", response_model=dict[str, Any], tags=["settings"])
    def cmd_flags() -> dict[str, Any]:
        return listings.cmd_flags(api)


def _switch(api: ApiContext, checkpoint, vae: str | None) -> None:
    engine = api.app.engine
    if vae is not None:
        if vae != engine.models.vae_choice:
            engine.set_vae(vae)
        api.app.settings.update({"sd_vae": vae})
    if checkpoint is not None:
        current = engine.models.current
        if current is None or current.file.path != checkpoint.path:
            api.load(checkpoint)
        api.remember_checkpoint_setting()


def _list_routes(router: APIRouter, api: ApiContext) -> None:
    get = lambda path, model: router.get(f"{PREFIX}/{path}", response_model=model, tags=["lists"])  # noqa: E731

    @get("samplers", list[m.SamplerItem])
    def samplers() -> list[dict]:
        return listings.samplers(api)

    @get("schedulers", list[m.SchedulerItem])
    def schedulers() -> list[dict]:
        return listings.schedulers(api)

    @get("upscalers", list[m.UpscalerItem])
    def upscalers() -> list[dict]:
        return listings.upscalers()

    @get("latent-upscale-modes", list[m.LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[dict]:
        """Empty: hires fix (where latent upscaling is used) is not implemented yet."""
        return []

    @get("sd-models", list[m.SDModelItem])
    def sd_models() -> list[dict]:
        return listings.sd_models(api)

    @get("sd-vae", list[m.SDVaeItem])
    def sd_vae() -> list[dict]:
        return listings.sd_vaes(api)

    @get("loras", list[m.LoraItem])
    def loras() -> list[dict]:
        return listings.loras(api)

    @get("embeddings", m.EmbeddingsResponse)
    def embeddings() -> dict:
        return listings.embeddings(api)

    @get("prompt-styles", list[m.PromptStyleItem])
    def prompt_styles() -> list[dict]:
        return []

    @get("scripts", m.ScriptsList)
    def scripts() -> dict:
        """Titles (lower case, as A1111) of the extension scripts of each tab, selectable and always-on."""
        host = api.app.extensions
        return {kind: [host.title_of(s).lower() for s in host.runner(kind).scripts if s.extension not in host.disabled]
                for kind in ("txt2img", "img2img")}

    @get("script-info", list[m.ScriptInfo])
    def script_info() -> list[dict]:
        return api.app.extensions.script_info()

    @get("extensions", list[m.ExtensionItem])
    def extensions() -> list[dict]:
        """Installed extensions (built-in ones too), with their git origin where they have one."""
        return listings.extensions(api)

    @get("hypernetworks", list[m.NamedItem])
    def hypernetworks() -> list[dict]:
        return []

    @get("face-restorers", list[m.NamedItem])
    def face_restorers() -> list[dict]:
        return []

    @get("realesrgan-models", list[m.NamedItem])
    def realesrgan_models() -> list[dict]:
        return []

    @get("memory", m.MemoryResponse)
    def memory() -> dict:
        return listings.memory()


def _model_routes(router: APIRouter, api: ApiContext) -> None:
    post = lambda path: router.post(f"{PREFIX}/{path}", response_model=m.Empty, tags=["models"])  # noqa: E731

    @post("refresh-checkpoints")
    def refresh_checkpoints() -> dict:
        api.app.engine.models.refresh()
        return {}

    @post("refresh-vae")
    def refresh_vae() -> dict:
        api.app.engine.models.refresh()
        return {}

    @post("refresh-loras")
    def refresh_loras() -> dict:
        return listings.refresh_loras(api)

    @post("refresh-embeddings")
    def refresh_embeddings() -> dict:
        return {}

    @post("unload-checkpoint")
    async def unload_checkpoint() -> dict:
        """Free the loaded checkpoint (after queued jobs); the next generation reloads it."""
        await api.run_task(MODEL_JOB, api.unload)
        return {}

    @post("reload-checkpoint")
    async def reload_checkpoint() -> dict:
        await api.run_task(MODEL_JOB, api.ensure_model)
        return {}


def _image_routes(router: APIRouter, api: ApiContext) -> None:
    app = api.app

    def max_pixels() -> int:
        return int(app.settings.get("img_max_pixels"))

    @router.post(f"{PREFIX}/png-info", response_model=m.PNGInfoResponse, tags=["images"])
    def read_png_info(req: m.PNGInfoRequest) -> dict[str, Any]:
        """The infotext of an image, its other metadata, and the parsed parameters."""
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        out = png_info(decode_image(req.image, "image", max_pixels()))
        if out["info"]:   # A1111 runs the infotext_pasted callbacks on the parsed parameters
            out["parameters"] = app.extensions.infotext_pasted(out["info"], out["parameters"])
        return out

    @router.post(f"{PREFIX}/extra-single-image", response_model=m.ExtrasSingleImageResponse, tags=["images"])
    def extra_single_image(req: m.ExtrasSingleImageRequest) -> dict[str, Any]:
        fmt = app.settings.get("samples_format")
        images, html_info = extras.process([(req.image, "image")], req, max_pixels(), fmt)
        return {"html_info": html_info, "image": images[0]}

    @router.post(f"{PREFIX}/extra-batch-images", response_model=m.ExtrasBatchImagesResponse, tags=["images"])
    def extra_batch_images(req: m.ExtrasBatchImagesRequest) -> dict[str, Any]:
        if not req.imageList:
            raise ApiError(422, "send at least one image", field="imageList")
        pairs = [(item.data, f"imageList.{i}.data") for i, item in enumerate(req.imageList)]
        images, html_info = extras.process(pairs, req, max_pixels(), app.settings.get("samples_format"))
        return {"html_info": html_info, "images": images}
