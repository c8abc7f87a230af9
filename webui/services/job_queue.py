"""One FIFO queue of generation jobs, shared by the UI and the API, each job with its own progress.

`JobQueue` is the small interface the faces use; `InProcessQueue` is the implementation that runs jobs on
a worker thread in this process. A distributed worker pool would be another implementation of it.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol

import torch

from ..engine.errors import EngineError
from ..engine.processing import GenerationResult, JobControl, StepInfo

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class QueueFullError(EngineError):
    pass


class JobNotFound(EngineError):
    pass


class JobForbidden(EngineError):
    """The job belongs to someone else (control methods given an `owner`)."""


@dataclass
class Job:
    id: str
    kind: str                                   # "txt2img", "img2img", …
    run: Callable[[JobControl, Callable[[StepInfo], None]], GenerationResult]
    owner: str = "local"
    status: JobStatus = JobStatus.QUEUED
    control: JobControl = field(default_factory=JobControl)
    step: int = 0
    total_steps: int = 0
    latest: torch.Tensor | None = None          # current x0 prediction, for previews
    latest_step: int = 0
    result: GenerationResult | None = None
    error: str | None = None
    exception: BaseException | None = None      # what `error` describes, for faces that map error types
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    sequence: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    done_event: threading.Event = field(default_factory=threading.Event)

    @property
    def progress(self) -> float:
        if self.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, from the rate so far."""
        if self.started is None or not self.step or not self.total_steps:
            return None
        elapsed = time.time() - self.started
        return elapsed / self.step * (self.total_steps - self.step)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class JobQueue(Protocol):
    def submit(self, kind: str, run: Callable, owner: str = "local", job_id: str | None = None,
               meta: dict | None = None) -> Job: ...
    def get(self, job_id: str) -> Job: ...
    def current(self) -> Job | None: ...
    def pending(self) -> list[Job]: ...
    def position(self, job_id: str) -> int: ...
    def interrupt(self, job_id: str | None = None, owner: str | None = None) -> None: ...
    def skip(self, job_id: str | None = None, owner: str | None = None) -> None: ...
    def cancel(self, job_id: str, owner: str | None = None) -> None: ...
    def shutdown(self) -> None: ...


class InProcessQueue:
    """FIFO with a bound on waiting jobs; one worker thread runs them in order."""

    def __init__(self, max_size: int = 32, keep_finished: int = 200):
        self.max_size = max_size
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._finished: deque[str] = deque()
        self._keep_finished = keep_finished
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._counter = itertools.count(1)
        self._stopping = False
        self._worker = threading.Thread(target=self._loop, name="generation-worker", daemon=True)
        self._worker.start()

    # ---- submitting and looking up ---------------------------------------------------------------
    def submit(self, kind: str, run: Callable, owner: str = "local", job_id: str | None = None,
               meta: dict | None = None) -> Job:
        with self._cond:
            if len(self._waiting) >= self.max_size:
                raise QueueFullError(f"the queue is full ({self.max_size} jobs waiting); try again shortly")
            job_id = job_id or uuid.uuid4().hex
            if job_id in self._jobs and self._jobs[job_id].status in (JobStatus.QUEUED, JobStatus.RUNNING):
                raise EngineError(f"a job with id {job_id!r} is already queued or running")
            job = Job(id=job_id, kind=kind, run=run, owner=owner, sequence=next(self._counter), meta=meta or {})
            self._jobs[job_id] = job
            self._waiting.append(job)
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def current(self) -> Job | None:
        return self._current

    def pending(self) -> list[Job]:
        with self._cond:
            return list(self._waiting)

    def position(self, job_id: str) -> int:
        """0 while running, 1.. while waiting, -1 when finished."""
        with self._cond:
            if self._current is not None and self._current.id == job_id:
                return 0
            for i, job in enumerate(self._waiting, start=1):
                if job.id == job_id:
                    return i
        return -1

    # ---- control ---------------------------------------------------------------------------------
    # With `owner`, each of these acts only on a job of that owner and raises JobForbidden otherwise;
    # without it (admins, or no auth) on any job.
    def interrupt(self, job_id: str | None = None, owner: str | None = None) -> None:
        """Stop the running job (or the given one) after its current step; keep what it finished."""
        job = self._current if job_id is None else self.get(job_id)
        _check_owner(job, owner)
        if job is not None and job.status is JobStatus.RUNNING:
            job.control.interrupted = True
        elif job is not None and job.status is JobStatus.QUEUED:
            self.cancel(job.id)

    def skip(self, job_id: str | None = None, owner: str | None = None) -> None:
        job = self._current if job_id is None else self.get(job_id)
        _check_owner(job, owner)
        if job is not None and job.status is JobStatus.RUNNING:
            job.control.skipped = True

    def cancel(self, job_id: str, owner: str | None = None) -> None:
        """A queued job is removed before it starts; a running one is interrupted."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            _check_owner(job, owner)
            if job.status is JobStatus.QUEUED:
                self._waiting.remove(job)
                self._finish(job, JobStatus.CANCELLED)
                return
        if job.status is JobStatus.RUNNING:
            job.control.interrupted = True

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                self._finish(job, JobStatus.CANCELLED)
            self._waiting.clear()
            if self._current is not None:
                self._current.control.interrupted = True
            self._cond.notify_all()

    # ---- the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started = JobStatus.RUNNING, time.time()
                self._current = job
            self._execute(job)

    def _execute(self, job: Job) -> None:
        def progress(info: StepInfo) -> None:
            job.step, job.total_steps = info.step, info.total_steps
            job.latest, job.latest_step = info.denoised, info.step

        try:
            job.result = job.run(job.control, progress)
            status = JobStatus.DONE
        except Exception as exc:  # a failed job must never take the worker down
            job.error, job.exception = _describe(exc), exc
            log.error("job %s failed: %s\n%s", job.id, job.error, traceback.format_exc())
            status = JobStatus.FAILED
            _release_memory()
        with self._cond:
            self._current = None
            self._finish(job, status)

    def _finish(self, job: Job, status: JobStatus) -> None:
        job.status, job.finished = status, time.time()
        job.latest = None
        job.done_event.set()
        self._finished.append(job.id)
        while len(self._finished) > self._keep_finished:
            self._jobs.pop(self._finished.popleft(), None)


def _check_owner(job: Job | None, owner: str | None) -> None:
    if job is not None and owner is not None and job.owner != owner:
        raise JobForbidden(f"job {job.id} belongs to someone else; only its owner or an admin may control it")


def _describe(exc: Exception) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}. Try a smaller size or batch, or --medvram/--lowvram"
    if isinstance(exc, EngineError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _release_memory() -> None:
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
