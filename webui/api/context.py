"""What the API routes share: the App, plus model operations that run in the job queue.

Model switches go through the same FIFO queue as generation (as A1111's options callbacks take its queue
lock), so a switch never lands between two jobs that were queued before it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import anyio

from ..app import App
from ..engine.errors import CheckpointError, InvalidParameterError
from ..engine.model_files import ModelFile
from ..engine.model_manager import VAE_AUTOMATIC, VAE_NONE
from ..services.job_queue import Job, JobStatus
from .errors import ApiError, field_error

log = logging.getLogger(__name__)
MODEL_JOB = "model"


@dataclass
class ApiContext:
    app: App
    last_checkpoint: ModelFile | None = None

    def __post_init__(self) -> None:
        current = self.app.engine.models.current
        if current is not None:
            self.last_checkpoint = current.file

    # ---- names ----------------------------------------------------------------------------------
    def resolve_checkpoint(self, name: Any, field: str) -> ModelFile:
        """A checkpoint by name, title or path; a 422 listing the valid titles otherwise."""
        if not isinstance(name, str) or not name.strip():
            raise field_error(field, f"expected a checkpoint name; valid: {self.checkpoint_titles()}")
        found = self._listed(name) or self._by_hash(name.strip().lower())
        if found is None:
            raise field_error(field, f"unknown checkpoint {name!r}; valid: {self.checkpoint_titles()}")
        return found

    def _listed(self, name: str) -> ModelFile | None:
        """Only checkpoints the app lists: a client must not make the server load an arbitrary path."""
        models = self.app.engine.models
        try:
            file = models.resolve(name)
        except CheckpointError:
            return None
        listed = {f.path.resolve() for f in models.checkpoints()}
        return file if file.path.resolve() in listed else None

    def _by_hash(self, text: str) -> ModelFile | None:
        """A1111 also knows a checkpoint by its short hash or sha256 (only hashes already computed)."""
        models = self.app.engine.models
        if len(text) < 8:
            return None
        for file in models.checkpoints():
            sha = None if file.is_diffusers_folder else models.hashes.lookup("sha256", file.path)
            if sha and (sha == text or sha[:10] == text):
                return file
        return None

    def checkpoint_titles(self) -> str:
        models = self.app.engine.models
        return ", ".join(models.title(f) for f in models.checkpoints()) or "(none)"

    def vae_choices(self) -> list[str]:
        return [VAE_AUTOMATIC, VAE_NONE] + [v.name for v in self.app.engine.models.vaes()]

    def check_vae(self, name: Any, field: str) -> str:
        if not isinstance(name, str) or name not in self.vae_choices():
            raise field_error(field, f"unknown VAE {name!r}; valid: {', '.join(self.vae_choices())}")
        return name

    def current_title(self) -> str | None:
        models = self.app.engine.models
        if models.current is None:
            return None
        models.model_hash(models.current)   # so the title carries the short hash, as A1111's does
        return models.title(models.current.file)

    # ---- model operations (call these on the queue's worker) -------------------------------------
    def load(self, file: ModelFile) -> None:
        self.app.engine.load_checkpoint(file.path)
        self.last_checkpoint = file

    def ensure_model(self) -> None:
        """Reload the last checkpoint after /unload-checkpoint, as A1111 does before generating."""
        if self.app.engine.models.current is not None:
            return
        file = self.last_checkpoint
        if file is None:
            from ..startup import default_checkpoint
            query = default_checkpoint(self.app.engine, self.app.settings.get("sd_model_checkpoint") or None)
            file = self.app.engine.models.resolve(query)
        self.load(file)

    def unload(self) -> None:
        models = self.app.engine.models
        if models.current is not None:
            self.last_checkpoint = models.current.file
        with self.app.engine.lock:
            models.unload()

    def remember_checkpoint_setting(self) -> None:
        title = self.current_title()
        if title is not None:
            self.app.settings.update({"sd_model_checkpoint": title})

    # ---- running small tasks through the queue ---------------------------------------------------
    def submit_task(self, kind: str, task: Callable[[], Any]) -> Job:
        return self.app.queue.submit(kind, lambda control, progress: task(), owner="api")

    async def run_task(self, kind: str, task: Callable[[], Any]) -> Any:
        job = self.submit_task(kind, task)
        await wait_for(job)
        if job.status is JobStatus.FAILED:
            raise ApiError(500, job.error or "the task failed", kind="TaskFailed")
        if job.status is JobStatus.CANCELLED:
            raise ApiError(409, f"the {kind} task was cancelled before it ran", kind="JobCancelled")
        return job.result


async def wait_for(job: Job, poll: float = 0.02) -> None:
    """Wait for a job without holding a worker thread (many clients may be waiting at once)."""
    delay = poll
    while not job.done_event.is_set():
        await anyio.sleep(delay)
        delay = min(delay * 1.5, 0.1)


# Settings naming folders the server writes to: a remote client could otherwise make it write anywhere.
PATH_SETTINGS = frozenset({"outdir_txt2img_samples", "outdir_img2img_samples"})


def check_path_setting(app: App, key: str, field: str, admin: bool) -> None:
    """Path settings change only from the machine itself (loopback, no auth) or by an admin under auth."""
    from ..security.exposure import server_is_exposed

    if key not in PATH_SETTINGS or admin:
        return
    if app.args is not None and server_is_exposed(app.args):
        raise ApiError(403, f"{field}: output folders can only be changed by an admin (or in the UI on the "
                            "server's own machine)", kind="Forbidden")


def coerce_setting(app: App, key: str, value: Any, field: str) -> Any:
    try:
        return app.settings.options[key].coerce(value)
    except InvalidParameterError as exc:
        raise field_error(field, str(exc).split(": ", 1)[-1]) from None


def timestamp(seconds: float | None) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(seconds)) if seconds else "0"
