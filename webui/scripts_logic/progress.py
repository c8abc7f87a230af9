"""Progress of a script that runs several generations in one job (one per X/Y/Z cell, matrix prompt, line).

Each `process_images` call reports its own steps from 0; `job_part` rescales them so the job's progress bar
runs once from 0 to 100% over all the parts instead of restarting for each.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def job_part(p: Any, index: int, count: int) -> Iterator[None]:
    """While inside, the job's progress is (index + this part's fraction) / count."""
    runtime = getattr(p, "runtime", None)
    outer = getattr(runtime, "progress", None)
    if outer is None or count <= 1:
        yield
        return

    def progress(info) -> None:
        total = max(1, int(info.total_steps))
        outer(dataclasses.replace(info, step=index * total + int(info.step), total_steps=count * total))

    runtime.progress = progress
    try:
        yield
    finally:
        runtime.progress = outer
