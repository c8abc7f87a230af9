"""Progress of jobs: A1111's global /progress (the running job) and the per-job /internal/progress."""
from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from ..app import App
from ..services.job_queue import Job, JobNotFound, JobStatus
from .context import timestamp
from .images import encode_data_uri, encode_image

log = logging.getLogger(__name__)
FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


def _batch_position(job: Job) -> tuple[int, int, int, int]:
    """(job_no, job_count, sampling_step, sampling_steps) per batch, as A1111's state counts them."""
    n_iter = max(1, int(job.meta.get("n_iter", 1)))
    per_batch = job.total_steps // n_iter if job.total_steps else 0
    if not per_batch:
        return 0, n_iter, 0, 0
    job_no = min(max(job.step - 1, 0) // per_batch, n_iter - 1)
    return job_no, n_iter, job.step - job_no * per_batch, per_batch


def _previews_on(app: App) -> bool:
    return bool(app.settings.get("live_previews_enable")) and int(app.settings.get("show_progress_every_n_steps")) != 0


def _preview(app: App, job: Job) -> Image.Image | None:
    try:
        return app.preview(job)
    except Exception:  # a preview is a nicety; it must never fail a progress poll
        log.exception("live preview failed")
        return None


def position(app: App, job: Job) -> int | None:
    """0 while running, 1.. while waiting, None when finished."""
    if job.status is JobStatus.RUNNING:
        return 0
    if job.status is JobStatus.QUEUED:
        ids = [j.id for j in app.queue.pending()]
        return ids.index(job.id) + 1 if job.id in ids else None
    return None


def progress(app: App, skip_current_image: bool) -> dict[str, Any]:
    job = app.queue.current()
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": {}, "current_image": None, "textinfo": None}
    job_no, job_count, step, steps = _batch_position(job)
    state = {
        "skipped": job.control.skipped, "interrupted": job.control.interrupted, "stopping_generation": False,
        "job": f"Batch {job_no + 1} out of {job_count}" if job_count > 1 else "", "job_count": job_count,
        "job_timestamp": timestamp(job.started), "job_no": job_no, "sampling_step": step, "sampling_steps": steps,
    }
    image = None
    if not skip_current_image and _previews_on(app):
        preview = _preview(app, job)
        image = encode_image(preview, "png") if preview is not None else None
    return {"progress": job.progress, "eta_relative": job.eta or 0.0, "state": state, "current_image": image,
            "textinfo": None}


def task_progress(app: App, id_task: str | None, id_live_preview: int, live_preview: bool) -> dict[str, Any]:
    try:
        job = app.queue.get(id_task or "")
    except JobNotFound:
        return {"active": False, "queued": False, "completed": False, "id_live_preview": -1, "textinfo": "Waiting..."}
    active, queued, completed = job.status is JobStatus.RUNNING, job.status is JobStatus.QUEUED, job.status in FINISHED
    if not active:
        textinfo = "Waiting..."
        if queued:
            textinfo = f"In queue: {position(app, job)}/{len(app.queue.pending())}"
        elif completed:
            textinfo = job.error if job.status is JobStatus.FAILED else job.status.value
        return {"active": False, "queued": queued, "completed": completed, "id_live_preview": -1, "textinfo": textinfo}
    preview, preview_id = None, id_live_preview
    step = job.latest_step
    if live_preview and _previews_on(app) and step != id_live_preview:
        image = _preview(app, job)
        if image is not None:
            preview, preview_id = encode_data_uri(image, "png"), step
    return {"active": True, "queued": False, "completed": False, "progress": job.progress, "eta": job.eta,
            "live_preview": preview, "id_live_preview": preview_id, "textinfo": None}


def job_info(app: App, job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "status": job.status.value, "position": position(app, job),
        "progress": job.progress, "step": job.step, "total_steps": job.total_steps, "eta": job.eta,
        "error": job.error, "created": job.created, "started": job.started, "finished": job.finished,
    }
