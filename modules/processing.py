"""A1111's `modules.processing`: the `p` classes, `process_images`, `Processed`, seed helpers.

`StableDiffusionProcessing` is this app's `Processing`. `StableDiffusionProcessingTxt2Img` /
`...Img2Img` are subclasses that extensions may construct (unknown A1111 keyword arguments are kept as plain
attributes); `isinstance(p, StableDiffusionProcessingImg2Img)` is true for any img2img `p` the host made.
`process_images(p)` runs inside the current job; a `p` built outside any job is queued as a job of its own.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

from webui.extensions_api import Processed, Processing
from webui.extensions_api import process_images as _process_images

from . import _bridge

__all__ = ["StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
           "Processed", "process_images", "fix_seed", "get_fixed_seed"]

StableDiffusionProcessing = Processing
_FIELDS = {f.name for f in dataclasses.fields(Processing)}
_READ_ONLY = {name for name, value in vars(Processing).items() if isinstance(value, property) and value.fset is None}


class _KindMeta(type):
    """isinstance() by kind: any host-made `p` counts as Txt2Img or Img2Img by its `is_img2img`."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, Processing) and bool(obj.is_img2img) == cls._img2img


class _Constructible(Processing, metaclass=_KindMeta):
    _img2img = False

    def __init__(self, **kwargs: Any):
        known = {k: v for k, v in kwargs.items() if k in _FIELDS}
        if "sampler_index" in kwargs and "sampler_name" not in kwargs and isinstance(kwargs["sampler_index"], str):
            known["sampler_name"] = kwargs["sampler_index"]
        for name in ("prompt", "negative_prompt"):   # A1111 allows a list: the per-image prompts
            if isinstance(known.get(name), list):
                values = known[name]
                known[name] = values[0] if values else ""
                known["all_" + ("prompts" if name == "prompt" else "negative_prompts")] = list(values)
        if known.get("styles") is None:
            known.pop("styles", None)
        super().__init__(**known, is_img2img=self._img2img)
        for key, value in kwargs.items():
            if key not in _FIELDS and key not in _READ_ONLY:
                setattr(self, key, value)


class StableDiffusionProcessingTxt2Img(_Constructible):
    _img2img = False


class StableDiffusionProcessingImg2Img(_Constructible):
    _img2img = True


def process_images(p: Processing) -> Processed:
    """Run one generation for `p` with the always-on scripts; inside the job that is running, if any."""
    if getattr(p, "runtime", None) is None:
        job = _bridge.current_job()
        if job is not None:
            p.runtime = job
        else:
            return _queued(p)
    return _process_images(p)


def _queued(p: Processing) -> Processed:
    """A `p` made outside any job (e.g. in an API route an extension added): a job of its own on the queue."""
    app = _bridge.app()
    job = app.submit("img2img" if p.is_img2img else "txt2img", p, save=False)
    job.wait()
    if job.result is None:
        raise RuntimeError(job.error or "the job did not finish")
    return Processed.from_result(p, job.result)


def get_fixed_seed(seed: int | None) -> int:
    if seed is None or seed == "" or seed == -1:
        return int(random.randrange(4294967294))
    return int(seed)


def fix_seed(p: Processing) -> None:
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)
