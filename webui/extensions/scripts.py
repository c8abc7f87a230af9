"""The `Script` base class (A1111's lifecycle) and the runner that calls a tab's scripts during a job.

A runner exists per tab kind (txt2img / img2img) and holds its own instances of every script class whose
`show(is_img2img)` is true (selectable, listed in the "Script" dropdown) or `AlwaysVisible` (always on).
Every call into script code goes through the host's guard: an exception is recorded, the extension is
disabled for the rest of the run, and the job goes on without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..engine.job_hooks import BatchInfo, ProcessingHooks
from .processing import PostprocessBatchListArgs, PostprocessImageArgs, Processed, Processing

if TYPE_CHECKING:
    from .host import ExtensionHost



class _AlwaysVisible:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()   # what show() returns for a script that is always on (A1111's scripts.AlwaysVisible)


class Script:
    """Subclass this in an extension's scripts/*.py file. Every method is optional except `title`."""
    # set by the host when it creates the instance
    filename: str = ""
    extension: str = ""           # the owning extension's folder name
    is_txt2img: bool = False
    is_img2img: bool = False
    alwayson: bool = False
    args_from: int = 0            # this script's slice of a flat args list (the UI's; A1111 names)
    args_to: int = 0
    infotext_fields: list | None = None
    api_info: Any = None

    # ---- naming and UI ---------------------------------------------------------------------------
    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool):
        """True: listed in the Script dropdown; AlwaysVisible: always on; False: not on this tab."""
        return True

    def ui(self, is_img2img: bool) -> list | None:
        """Create Gradio components; their values become the *args of the hooks below."""
        return None

    def elem_id(self, item_id: str) -> str:
        tab = "img2img" if self.is_img2img else "txt2img"
        name = "".join(c if c.isalnum() else "_" for c in self.title().lower())
        return f"script_{tab}_{name}_{item_id}"

    # ---- a selectable script's run ----------------------------------------------------------------
    def run(self, p: Processing, *args) -> Processed | None:
        """Do the job, usually by calling process_images(p) one or more times; None means 'run normally'."""
        return None

    # ---- always-on hooks, in the order they are called ----------------------------------------------
    def setup(self, p: Processing, *args) -> None: ...
    def before_process(self, p: Processing, *args) -> None: ...
    def process(self, p: Processing, *args) -> None: ...
    def before_process_batch(self, p: Processing, *args, **kwargs) -> None: ...   # batch_number, prompts, seeds, subseeds
    def process_batch(self, p: Processing, *args, **kwargs) -> None: ...          # batch_number, prompts, seeds, subseeds
    def before_hr(self, p: Processing, *args) -> None: ...
    def postprocess_batch(self, p: Processing, *args, **kwargs) -> None: ...      # images, batch_number
    def postprocess_batch_list(self, p: Processing, pp: PostprocessBatchListArgs, *args, **kwargs) -> None: ...
    def postprocess_image(self, p: Processing, pp: PostprocessImageArgs, *args) -> None: ...
    def postprocess(self, p: Processing, processed: Processed, *args) -> None: ...

    def describe(self) -> str:
        return ""


@dataclass
class ScriptSelection:
    """What a request asks of the scripts: the selected script (by title, case-insensitive) and its args,
    and args for always-on scripts by title. Missing args take the defaults of the script's ui()."""
    name: str | None = None
    args: list = field(default_factory=list)
    alwayson: dict[str, list] = field(default_factory=dict)


class ScriptRunner:
    """One tab kind's script instances, and the calls into them during a job."""

    def __init__(self, host: "ExtensionHost", is_img2img: bool, scripts: list[Script]):
        self.host = host
        self.is_img2img = is_img2img
        self.scripts = scripts
        self._defaults: dict[int, list] = {}

    # ---- lists -------------------------------------------------------------------------------------
    def _active(self, scripts: list[Script]) -> list[Script]:
        return [s for s in scripts if s.extension not in self.host.disabled]

    @property
    def selectable_scripts(self) -> list[Script]:
        return self._active([s for s in self.scripts if not s.alwayson])

    @property
    def alwayson_scripts(self) -> list[Script]:
        return self._active([s for s in self.scripts if s.alwayson])

    def titles(self) -> list[str]:
        return [self.host.title_of(s) for s in self.selectable_scripts]

    def find(self, title: str, alwayson: bool) -> Script | None:
        wanted = (title or "").strip().lower()
        pool = self.alwayson_scripts if alwayson else self.selectable_scripts
        return next((s for s in pool if self.host.title_of(s).lower() == wanted), None)

    # ---- args --------------------------------------------------------------------------------------
    def default_args(self, script: Script) -> list:
        """The values of the components `ui()` makes (built once in a throw-away Blocks), for API calls."""
        key = id(script)
        if key not in self._defaults:
            self._defaults[key] = [c.get("value") for c in self.host.describe_ui(script, self.is_img2img)]
        return list(self._defaults[key])

    def args_for(self, script: Script, given: list | None) -> list:
        defaults = self.default_args(script)
        given = list(given or [])
        return given + defaults[len(given):]

    def alwayson_args(self, selection: ScriptSelection) -> dict[int, list]:
        wanted = {k.strip().lower(): v for k, v in (selection.alwayson or {}).items()}
        return {id(s): self.args_for(s, wanted.get(self.host.title_of(s).lower()))
                for s in self.alwayson_scripts}

    # ---- calls -------------------------------------------------------------------------------------
    def each(self, p: Processing, method: str, *before, after: tuple = (), **kwargs) -> None:
        """Call `method(p, *before, *script_args, *after, **kwargs)` on every always-on script that has it."""
        args = p.runtime.alwayson_args if p.runtime is not None else {}
        for script in self.alwayson_scripts:
            own = getattr(type(script), method, None)
            if own is None or own is getattr(Script, method, None):
                continue   # not overridden: skip the call (and its guard)
            fn = getattr(script, method)
            self.host.guard(script.extension, method, fn, p, *before, *args.get(id(script), []), *after, **kwargs)

    def processing_hooks(self) -> ProcessingHooks:
        """The engine-level hooks that route each point of a job to the always-on scripts."""
        return ProcessingHooks(process=self._process, before_batch=self._before_batch,
                               process_batch=self._process_batch, before_hr=self._before_hr,
                               postprocess_batch=self._postprocess_batch, postprocess_image=self._postprocess_image)

    def _process(self, p: Processing) -> None:
        self.each(p, "process")

    def _batch_call(self, method: str) -> Callable[[Processing, BatchInfo], None]:
        def call(p: Processing, batch: BatchInfo) -> None:
            p.iteration = batch.index
            p.prompts, p.negative_prompts = batch.prompts, batch.negative_prompts
            p.seeds, p.subseeds = batch.seeds, batch.subseeds
            self.each(p, method, batch_number=batch.index, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            batch.prompts, batch.negative_prompts = p.prompts, p.negative_prompts
            batch.seeds, batch.subseeds = p.seeds, p.subseeds
        return call

    def _before_batch(self, p: Processing, batch: BatchInfo) -> None:
        self._batch_call("before_process_batch")(p, batch)

    def _process_batch(self, p: Processing, batch: BatchInfo) -> None:
        self._batch_call("process_batch")(p, batch)

    def _before_hr(self, p: Processing, batch: BatchInfo) -> None:
        self.each(p, "before_hr")

    def _postprocess_batch(self, p: Processing, batch: BatchInfo, images: list) -> list:
        images = list(images)
        self.each(p, "postprocess_batch", images=images, batch_number=batch.index)
        pp = PostprocessBatchListArgs(images)
        self.each(p, "postprocess_batch_list", pp, batch_number=batch.index)
        for name in ("prompts", "negative_prompts", "seeds", "subseeds"):   # images added: reuse the last entry
            values = getattr(batch, name)
            values.extend(values[-1:] * (len(pp.images) - len(values)))
        return pp.images

    def _postprocess_image(self, p: Processing, batch: BatchInfo, index: int, image):
        p.batch_index = index
        pp = PostprocessImageArgs(image)
        self.each(p, "postprocess_image", pp)
        return pp.image
