"""Points where the layer above the engine (extension scripts) sees and changes one job.

The engine knows nothing about extensions: `processing.generate` takes a `ProcessingHooks` whose members are
optional plain callables, and calls each at a fixed point of the job. Every hook gets the job's
`GenerationParams` (for scripts, the A1111-style `p` object, which subclasses it) as first argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image


@dataclass
class BatchInfo:
    """One batch of a job. Hooks may change the lists in place or replace them; the engine reads them back."""
    index: int                       # 0-based batch number ("batch_number" in A1111)
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    subseeds: list[int]


@dataclass
class ProcessingHooks:
    """`p.all_prompts`, `p.all_negative_prompts`, `p.all_seeds` and `p.all_subseeds` are filled by the engine
    before `process` runs; what `process` leaves there is what the job uses."""
    process: Callable[[object], None] | None = None                          # (p)
    before_batch: Callable[[object, BatchInfo], None] | None = None          # (p, batch) before conditioning
    process_batch: Callable[[object, BatchInfo], None] | None = None         # (p, batch) before noise/sampling
    before_hr: Callable[[object, BatchInfo], None] | None = None             # (p, batch) before the hires pass
    # (p, batch, images) -> images, after the VAE decode, before infotexts are written
    postprocess_batch: Callable[[object, BatchInfo, list[Image.Image]], list[Image.Image]] | None = None
    # (p, batch, index in batch, image) -> image
    postprocess_image: Callable[[object, BatchInfo, int, Image.Image], Image.Image] | None = None
