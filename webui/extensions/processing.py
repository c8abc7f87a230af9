"""The `p` object scripts receive, the `Processed` result they return, and `process_images(p)`.

`Processing` subclasses the engine's `GenerationParams`, so every change a script makes to a field the engine
reads (prompt, steps, cfg_scale, width, all_prompts, extra_generation_params, …) takes effect. It adds the
A1111 attributes scripts expect (is_img2img, scripts, script_args, prompts/seeds of the current batch, …).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..engine.params import GenerationParams
from ..engine.processing import GenerationResult

if TYPE_CHECKING:
    from .host import JobRuntime
    from .scripts import ScriptRunner


@dataclass
class Processing(GenerationParams):
    """A1111's StableDiffusionProcessing: the request plus the per-job state scripts read and write."""
    is_img2img: bool = False
    styles: list[str] = field(default_factory=list)
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    override_settings: dict[str, Any] = field(default_factory=dict)   # "sd_model_checkpoint" switches the model
    comments: dict[str, Any] = field(default_factory=dict)
    # the current batch (set before before_process_batch; lists of batch_size)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    iteration: int = 0            # the batch number
    batch_index: int = 0          # the image's index within its batch (postprocess_image)
    # the scripts of this job and the selected script's args (A1111's p.scripts / p.script_args)
    scripts: "ScriptRunner | None" = field(default=None, repr=False, compare=False)
    script_args: tuple = field(default=(), repr=False, compare=False)
    runtime: "JobRuntime | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def from_params(cls, params: GenerationParams, is_img2img: bool, **extra: Any) -> "Processing":
        values = {f.name: getattr(params, f.name) for f in dataclasses.fields(GenerationParams)}
        return cls(**values, is_img2img=is_img2img, **extra)

    # ---- A1111 names for things this app keeps elsewhere --------------------------------------------
    @property
    def sd_model(self):
        """The loaded model (the engine's SDModel), or None."""
        return self.runtime.engine.models.current if self.runtime is not None else None

    @property
    def image_mask(self):
        return self.mask

    @image_mask.setter
    def image_mask(self, value) -> None:
        self.mask = value

    @property
    def all_hr_prompts(self) -> list[str]:
        return [self.hr_prompt or prompt for prompt in self.all_prompts]

    @property
    def all_hr_negative_prompts(self) -> list[str]:
        return [self.hr_negative_prompt or prompt for prompt in self.all_negative_prompts]

    def copy(self) -> "Processing":
        """A copy for one more `process_images` call (e.g. one cell of a plot): lists and dicts are copied, so
        the engine's writes to the copy do not reach this object; images and the runtime are shared."""
        other = copy.copy(self)
        for name in ("extra_generation_params", "override_settings", "comments", "sampler_options"):
            setattr(other, name, dict(getattr(self, name)))
        for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds", "prompts",
                     "negative_prompts", "seeds", "subseeds", "styles", "init_images"):
            setattr(other, name, list(getattr(self, name)))
        return other


@dataclass
class PostprocessImageArgs:
    """What postprocess_image gets: replace `image` to change the saved/returned picture."""
    image: Image.Image


@dataclass
class PostprocessBatchListArgs:
    """What postprocess_batch_list gets: change `images` (add, remove, replace) to change the batch."""
    images: list[Image.Image]


class Processed:
    """A1111's Processed: the images of a job with their infotexts and the lists that made them.

    Scripts that build their own output (a grid first, then the cells) construct one directly; set
    `index_of_first_image` to the number of leading extra images (grids).
    """

    def __init__(self, p: Processing, images: list[Image.Image], seed: int = -1, info: str = "",
                 subseed: int | None = None, all_prompts: list[str] | None = None,
                 all_negative_prompts: list[str] | None = None, all_seeds: list[int] | None = None,
                 all_subseeds: list[int] | None = None, index_of_first_image: int = 0,
                 infotexts: list[str] | None = None, comments: str = "", extra: dict | None = None):
        self.p = p
        self.images = list(images)
        self.prompt, self.negative_prompt = p.prompt, p.negative_prompt
        self.seed = seed if seed != -1 else (p.all_seeds[0] if p.all_seeds else p.seed)
        self.subseed = subseed if subseed is not None else (p.all_subseeds[0] if p.all_subseeds else p.subseed)
        self.all_prompts = list(all_prompts if all_prompts is not None else p.all_prompts)
        self.all_negative_prompts = list(all_negative_prompts if all_negative_prompts is not None
                                         else p.all_negative_prompts)
        self.all_seeds = list(all_seeds if all_seeds is not None else p.all_seeds)
        self.all_subseeds = list(all_subseeds if all_subseeds is not None else p.all_subseeds)
        self.infotexts = list(infotexts) if infotexts is not None else [info] * len(self.images)
        self.info = info or (self.infotexts[0] if self.infotexts else "")
        self.index_of_first_image = index_of_first_image
        self.comments = comments
        self.extra = dict(extra or {})        # engine info fields (sd_model_name, …) kept from the job
        self.interrupted = False
        self.extra_images: dict[str, list[Image.Image]] = {}
        for name in ("width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "subseed_strength",
                     "denoising_strength", "clip_skip", "extra_generation_params"):
            setattr(self, name, getattr(p, name))

    @classmethod
    def from_result(cls, p: Processing, result: GenerationResult) -> "Processed":
        out = cls(p, result.images, seed=result.seeds[0] if result.seeds else -1,
                  subseed=result.subseeds[0] if result.subseeds else None, all_prompts=result.prompts,
                  all_negative_prompts=result.negative_prompts, all_seeds=result.seeds,
                  all_subseeds=result.subseeds, infotexts=result.infotexts, extra=result.info)
        out.interrupted = result.interrupted
        out.extra_images = dict(result.extra_images)
        return out

    def info_dict(self) -> dict[str, Any]:
        """A1111's Processed.js() fields (the API's `info`)."""
        out = {"subseed_strength": self.subseed_strength, "width": self.width, "height": self.height,
               "sampler_name": self.sampler_name, "cfg_scale": self.cfg_scale, "steps": self.steps,
               "batch_size": self.batch_size}
        out.update(self.extra)   # the engine's values win (e.g. the canonical sampler name)
        out.update({
            "prompt": self.prompt, "all_prompts": self.all_prompts, "negative_prompt": self.negative_prompt,
            "all_negative_prompts": self.all_negative_prompts, "seed": self.seed, "all_seeds": self.all_seeds,
            "subseed": self.subseed, "all_subseeds": self.all_subseeds,
            "extra_generation_params": dict(self.extra_generation_params),
            "index_of_first_image": self.index_of_first_image, "infotexts": self.infotexts,
            "comments": self.comments,
        })
        return out

    def js(self) -> str:
        return json.dumps(self.info_dict(), default=str)

    def to_result(self) -> GenerationResult:
        """The app-level result (saved, shown, returned by the API): one infotext and seed per image."""
        n = len(self.images)
        infotexts = (self.infotexts + [self.info] * n)[:n]
        lead = self.index_of_first_image
        seeds = ([self.seed] * lead + self.all_seeds + [self.seed] * n)[:n]
        subseeds = ([self.subseed] * lead + self.all_subseeds + [self.subseed] * n)[:n]
        prompts = ([self.prompt] * lead + self.all_prompts + [self.prompt] * n)[:n]
        negatives = ([self.negative_prompt] * lead + self.all_negative_prompts + [self.negative_prompt] * n)[:n]
        for image, text in zip(self.images, infotexts):
            if text and "parameters" not in image.info:
                image.info["parameters"] = text
        result = GenerationResult(self.images, infotexts, seeds, subseeds, prompts, negatives, self.p,
                                  info=self.info_dict(), interrupted=self.interrupted,
                                  extra_images=self.extra_images)
        return result


def process_images(p: Processing) -> Processed:
    """Run one normal generation for `p` (with the always-on scripts' hooks) and return its `Processed`.

    This is what a selectable script's `run(p, *args)` calls, once or many times (with `p.copy()`s)."""
    if p.runtime is None:
        raise RuntimeError("process_images(p) needs a `p` made by the extension host for a job")
    return p.runtime.process_images(p)
