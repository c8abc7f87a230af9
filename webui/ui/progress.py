"""Following a queued job from the browser: progress bar, live preview, and the result when it finishes.

The job runs on the app's queue, not inside a Gradio event; the event only polls it. That is why a page
reload can pick the same job up again: the browser keeps the job id, and polling starts anew from it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from ..app import App
from ..security.owners import requester_of
from ..services.job_queue import Job, JobForbidden, JobNotFound, JobStatus
from . import html

log = logging.getLogger(__name__)
POLL_SECONDS = 0.4


@dataclass
class JobDisplay:
    """The components one generation tab shows a job in."""
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    html_info: gr.HTML
    result: gr.State
    selected: gr.State
    generate: gr.Button

    def outputs(self) -> list:
        return [self.progress, self.preview, self.gallery, self.info, self.html_info, self.result, self.selected,
                self.generate]


def find_job(app: App, job_id: str | None) -> Job | None:
    if not job_id:
        return None
    try:
        return app.queue.get(job_id)
    except JobNotFound:
        return None


def owner_of(request: gr.Request | None) -> str:
    """The owner a job submitted from this browser carries: the logged-in user, or the client address."""
    return requester_of(request).owner


def control_job(app: App, job_id: str | None, action: str, request: gr.Request | None) -> None:
    """Interrupt / skip / cancel the tab's job, if it is this user's own (or they are an admin)."""
    job = find_job(app, job_id)
    if job is None:
        return
    try:
        getattr(app.queue, action)(job.id, owner=requester_of(request).owner_filter())
    except JobForbidden:
        gr.Warning("That job belongs to someone else.")


def status_text(app: App, job: Job) -> tuple[float, str]:
    if job.status is JobStatus.QUEUED:
        position = app.queue.position(job.id)
        where = f" (position {position})" if position > 0 else ""
        return 0.0, f"Waiting in the queue{where}…"
    if not job.total_steps:
        return 0.0, "Starting…"
    return job.progress, (f"Step {job.step}/{job.total_steps} · {job.progress * 100:.0f}% · "
                          f"ETA {html.format_eta(job.eta)}")


class PreviewThrottle:
    """A live preview every N sampler steps, as the settings say (0 or previews off: none)."""

    def __init__(self, app: App):
        self.app = app
        self.shown_step = 0

    def every(self) -> int:
        if not self.app.settings.get("live_previews_enable"):
            return 0
        return int(self.app.settings.get("show_progress_every_n_steps"))

    def next_image(self, job: Job):
        n = self.every()
        step = job.latest_step
        if n <= 0 or job.latest is None or step - self.shown_step < n:
            return None
        self.shown_step = step
        try:
            return self.app.preview(job)
        except Exception:  # a preview must never break the generation view
            log.exception("live preview failed")
            return None


def watch(app: App, view: JobDisplay, job_id: str | None) -> Iterator[dict]:
    """Yield component updates until the job ends, then the result. Unknown ids leave the tab idle."""
    job = find_job(app, job_id)
    if job is None:
        yield {view.generate: gr.update(interactive=True)}
        return
    throttle = PreviewThrottle(app)
    while not job.wait(POLL_SECONDS if job.status is JobStatus.RUNNING else POLL_SECONDS * 2):
        fraction, text = status_text(app, job)
        update: dict[Any, Any] = {view.progress: html.progress_bar(fraction, text),
                                  view.generate: gr.update(interactive=False)}
        image = throttle.next_image(job) if job.status is JobStatus.RUNNING else None
        if image is not None:
            update[view.preview] = gr.update(value=image, visible=True)
        yield update
    yield finished(app, view, job)


def finished(app: App, view: JobDisplay, job: Job) -> dict:
    base = {view.progress: "", view.preview: gr.update(value=None, visible=False),
            view.generate: gr.update(interactive=True)}
    if job.status is JobStatus.FAILED:
        return base | {view.html_info: html.message(f"Generation failed: {job.error}", "error")}
    if job.status is JobStatus.CANCELLED or job.result is None:
        return base | {view.html_info: html.message("The job was cancelled before it started.", "warning")}
    result = job.result
    images = [_shareable(app, im) for im in result.images]
    state = {"job_id": job.id, "infotexts": list(result.infotexts), "seeds": list(result.seeds),
             "subseeds": list(result.subseeds)}
    return base | {
        view.gallery: gr.update(value=images, selected_index=None),
        view.info: result.infotexts[0] if result.infotexts else "",
        view.html_info: html.message(_summary(result, app.engine.paths.data_dir),
                                     "warning" if result.interrupted else "info"),
        view.result: state,
        view.selected: 0,
    }


def _shown_folder(folder: Path, data_dir: Path) -> str:
    """Relative to the data folder when inside it (shorter, and the same on every machine)."""
    try:
        return str(folder.relative_to(data_dir))
    except ValueError:
        return str(folder)


def _shareable(app: App, image):
    """The gallery serves PNGs with the image's text chunks; drop the infotext if the user turned it off."""
    if app.settings.get("enable_pnginfo"):
        return image
    copy = image.copy()
    copy.info.pop("parameters", None)
    return copy


def _summary(result, data_dir: Path) -> str:
    lines = []
    if result.interrupted:
        lines.append(f"Interrupted: kept {len(result.images)} image(s).")
    paths = [Path(p) for p in result.info.get("saved_paths") or []]
    lines += [f"Saved: {p.name}  ({_shown_folder(p.parent, data_dir)})" for p in paths]
    if not paths and result.images:
        lines.append("Not saved (Settings → Saving images).")
    if not result.images:
        lines.append("No image finished.")
    return "\n".join(lines)
