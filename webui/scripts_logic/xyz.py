"""X/Y/Z plot: axis types, A1111's value syntax, the cell order and the labelled grid.

Value syntax (as A1111's xyz_grid.py): values are a CSV list (quotes protect commas, e.g. for Prompt S/R);
for whole-number and decimal axes an item may also be a range:
  `1-5`        → 1, 2, 3, 4, 5          (end included, step 1)
  `1-10 (+2)`  → 1, 3, 5, 7, 9          (step in parentheses; may be negative: `10-1 (-3)`)
  `1-10 [5]`   → 1, 3, 5, 7, 10         (a count in brackets: evenly spaced, ints truncated)
Seed values of -1 (or empty) become random seeds once, before any image is made.
"""
from __future__ import annotations

import csv
import io
import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..engine import grids
from ..engine.errors import InvalidParameterError

_NUM = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
RE_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[(\d+)\s*\]\s*")
RE_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[(\d+(?:\.\d*)?)\s*\]\s*")

MAX_SEED = 4294967294
MAX_CELLS = 10000


class AxisError(InvalidParameterError):
    """A bad axis value; the message names the axis and the value. An engine error: the job fails with this
    message, and the script is not treated as broken."""

    def __init__(self, message: str):
        super().__init__("script_args", message)


# ---- value text → list ---------------------------------------------------------------------------

def csv_values(text: str) -> list[str]:
    """A1111's csv_string_to_list_strip: CSV (double quotes protect commas), items stripped, empties kept."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [item.strip() for item in itertools.chain.from_iterable(rows)]


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)


def expand_int(items: Iterable[str]) -> list[str | int]:
    out: list[str | int] = []
    for item in items:
        if item.strip() == "":
            continue
        m, mc = RE_RANGE.fullmatch(item), RE_RANGE_COUNT.fullmatch(item)
        if m is not None:
            start, end = int(_number(m.group(1))), int(_number(m.group(2)))
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step == 0:
                raise AxisError(f"range {item!r} has a step of 0")
            out += list(range(start, end + (1 if step > 0 else -1), step))
        elif mc is not None:
            start, end, num = int(_number(mc.group(1))), int(_number(mc.group(2))), int(mc.group(3))
            out += [int(x) for x in np.linspace(start, end, num).tolist()]
        else:
            out.append(item)
    return out


def expand_float(items: Iterable[str]) -> list[str | float]:
    out: list[str | float] = []
    for item in items:
        if item.strip() == "":
            continue
        m, mc = RE_RANGE_FLOAT.fullmatch(item), RE_RANGE_COUNT_FLOAT.fullmatch(item)
        if m is not None:
            start, end = float(_number(m.group(1))), float(_number(m.group(2)))
            step = float(m.group(3)) if m.group(3) is not None else 1.0
            if step == 0:
                raise AxisError(f"range {item!r} has a step of 0")
            # arange excludes the end; half a step of slack includes it despite float error
            out += [round(v, 8) for v in np.arange(start, end + step / 2, step).tolist()]
        elif mc is not None:
            start, end, num = float(_number(mc.group(1))), float(_number(mc.group(2))), int(float(mc.group(3)))
            out += [round(v, 8) for v in np.linspace(start, end, num).tolist()]
        else:
            out.append(item)
    return out


def fix_seeds(values: Sequence[Any], rng: random.Random | None = None) -> list[Any]:
    """-1, None or '' become one random seed each (A1111's fix_axis_seeds)."""
    rng = rng or random.Random()
    return [rng.randrange(MAX_SEED) if v is None or v == "" or v == -1 else v for v in values]


# ---- axis types ----------------------------------------------------------------------------------

@dataclass
class AxisContext:
    """What validation needs from the app: sampler/schedule names and a checkpoint lookup."""
    samplers: dict[str, str] = field(default_factory=dict)    # lower-cased name or alias → canonical name
    schedules: dict[str, str] = field(default_factory=dict)   # lower-cased name or label → label
    resolve_checkpoint: Callable[[str], str | None] = lambda name: None   # query → canonical name or None
    checkpoint_choices: list[str] = field(default_factory=list)
    sampler_choices: list[str] = field(default_factory=list)
    schedule_choices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AxisOption:
    label: str
    type: str                       # "int", "float", "str", "permutation" or "nothing"
    apply: Callable[[Any, Any, list], None]
    format: Callable[["AxisOption", Any], str] = lambda opt, x: format_with_label(opt, x)
    confirm: Callable[[Any, list, AxisContext], list] | None = None   # may return normalised values
    choices: Callable[[AxisContext], list[str]] | None = None
    cost: float = 0.0               # the costliest axis is the outermost loop (checkpoint switches)
    img2img_only: bool = False


def format_with_label(opt: AxisOption, x: Any) -> str:
    if isinstance(x, float):
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_plain(opt: AxisOption, x: Any) -> str:
    return str(x)


def format_nothing(opt: AxisOption, x: Any) -> str:
    return ""


def format_basename(opt: AxisOption, x: Any) -> str:
    return PurePath(str(x)).name


def format_join(opt: AxisOption, x: Any) -> str:
    return ", ".join(x)


def apply_field(name: str) -> Callable[[Any, Any, list], None]:
    def apply(p, x, xs):
        setattr(p, name, x)
    return apply


def apply_nothing(p, x, xs) -> None:
    pass


def apply_prompt_sr(p, x, xs) -> None:
    """Replace the first value (the search term) with this one in the prompt and negative prompt."""
    search = xs[0]
    if search not in p.prompt and search not in p.negative_prompt:
        raise AxisError(f"Prompt S/R did not find {search!r} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(search, x)
    p.negative_prompt = p.negative_prompt.replace(search, x)


def apply_prompt_order(p, x, xs) -> None:
    """Rebuild the prompt with the tokens of `x` in this order, where they were found."""
    rest = p.prompt
    found = sorted(((rest.find(token), token) for token in x), key=lambda t: t[0])
    parts = []
    for _, token in found:
        n = rest.find(token)
        parts.append(rest[:n])
        rest = rest[n + len(token):]
    p.prompt = "".join(part + token for part, token in zip(parts, x)) + rest


def apply_override(key: str) -> Callable[[Any, Any, list], None]:
    def apply(p, x, xs):
        overrides = getattr(p, "override_settings", None)
        if overrides is None:
            overrides = {}
            setattr(p, "override_settings", overrides)
        overrides[key] = x
    return apply


def confirm_prompt_sr(p, values: list, ctx: AxisContext) -> list:
    if not values:
        return values
    if p is not None and values[0] not in p.prompt and values[0] not in p.negative_prompt:
        raise AxisError(f"Prompt S/R did not find {values[0]!r} in prompt or negative prompt.")
    return values


def _known_names(values: list, table: dict[str, str], what: str) -> list:
    """Each value's registered spelling (`table` maps lower-case names to it); an unknown one is an AxisError."""
    out = []
    for v in values:
        name = table.get(str(v).lower())
        if name is None:
            raise AxisError(f"Unknown {what}: {v}")
        out.append(name)
    return out


def confirm_samplers(p, values: list, ctx: AxisContext) -> list:
    return _known_names(values, ctx.samplers, "sampler")


def confirm_schedules(p, values: list, ctx: AxisContext) -> list:
    return _known_names(values, ctx.schedules, "schedule type")


def confirm_checkpoints(p, values: list, ctx: AxisContext) -> list:
    out = []
    for v in values:
        name = ctx.resolve_checkpoint(str(v))
        if name is None:
            raise AxisError(f"Unknown checkpoint: {v}")
        out.append(name)
    return out


def closest_checkpoint(query: str, names: Sequence[str]) -> str | None:
    """A1111's get_closet_checkpoint_match over names: exact, then stem, then the shortest name containing it."""
    query = query.strip()
    bare = query.split(" [")[0] if query.endswith("]") else query
    for name in names:
        if name == bare:
            return name
    for name in names:
        if PurePath(name).stem == bare or PurePath(name).name == bare:
            return name
    containing = sorted((n for n in names if bare and bare in n), key=len)
    return containing[0] if containing else None


AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", "nothing", apply_nothing, format=format_nothing),
    AxisOption("Seed", "int", apply_field("seed")),
    AxisOption("Var. seed", "int", apply_field("subseed")),
    AxisOption("Var. strength", "float", apply_field("subseed_strength")),
    AxisOption("Steps", "int", apply_field("steps")),
    AxisOption("CFG Scale", "float", apply_field("cfg_scale")),
    AxisOption("Prompt S/R", "str", apply_prompt_sr, format=format_plain, confirm=confirm_prompt_sr),
    AxisOption("Prompt order", "permutation", apply_prompt_order, format=format_join),
    AxisOption("Sampler", "str", apply_field("sampler_name"), format=format_plain, confirm=confirm_samplers,
               choices=lambda ctx: list(ctx.sampler_choices)),
    AxisOption("Schedule type", "str", apply_field("scheduler"), confirm=confirm_schedules,
               choices=lambda ctx: list(ctx.schedule_choices)),
    AxisOption("Checkpoint name", "str", apply_override("sd_model_checkpoint"), format=format_basename,
               confirm=confirm_checkpoints, choices=lambda ctx: list(ctx.checkpoint_choices), cost=1.0),
    AxisOption("Denoising", "float", apply_field("denoising_strength")),
    AxisOption("Clip skip", "int", apply_field("clip_skip")),
)


def axis_options(is_img2img: bool) -> list[AxisOption]:
    return [opt for opt in AXIS_OPTIONS if is_img2img or not opt.img2img_only]


def find_option(options: Sequence[AxisOption], choice: int | str | None) -> AxisOption:
    """An axis by index (A1111's dropdown sends the index) or by label (case-insensitive)."""
    if choice is None or choice == "":
        return options[0]
    if isinstance(choice, bool):
        raise AxisError(f"axis type must be an index or a label (got {choice!r})")
    if isinstance(choice, int) or (isinstance(choice, str) and choice.strip().isdigit()):
        index = int(choice)
        if not 0 <= index < len(options):
            raise AxisError(f"axis type index {index} is out of range 0–{len(options) - 1}")
        return options[index]
    for opt in options:
        if opt.label.lower() == str(choice).strip().lower():
            return opt
    raise AxisError(f"unknown axis type {choice!r}; valid: {', '.join(o.label for o in options)}")


def _convert(opt: AxisOption, value: Any) -> Any:
    try:
        if opt.type == "int":
            return int(value) if not isinstance(value, str) else int(value.strip())
        if opt.type == "float":
            return float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if opt.type == "int" else "a number"
        raise AxisError(f"{opt.label}: {value!r} is not {kind}") from None
    return value


def parse_axis(opt: AxisOption, text: str, ctx: AxisContext | None = None, p: Any = None,
               dropdown: Sequence[str] | None = None, csv_mode: bool = False) -> list[Any]:
    """The values of one axis, expanded, converted, and checked (unknown sampler/checkpoint → AxisError)."""
    ctx = ctx or AxisContext()
    if opt.type == "nothing":
        return [None]
    if opt.choices is not None and not csv_mode and dropdown:
        items: list[Any] = list(dropdown)
    else:
        items = csv_values(text)
    if opt.type == "int":
        items = expand_int(items)
    elif opt.type == "float":
        items = expand_float(items)
    elif opt.type == "permutation":
        items = [list(perm) for perm in itertools.permutations([i for i in items if i != ""])]
    else:
        items = [i for i in items if i != ""] if opt.choices is not None else items
    values = [_convert(opt, v) for v in items]
    if not values:
        raise AxisError(f"{opt.label}: no values given")
    if opt.label in ("Seed", "Var. seed"):
        values = fix_seeds(values)
    if opt.confirm is not None:
        values = opt.confirm(p, values, ctx)
    return values


# ---- the run -------------------------------------------------------------------------------------

def cell_order(counts: tuple[int, int, int], costs: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """Every (ix, iy, iz); the costliest axis changes least often (ties: z, then y, outermost)."""
    axes = sorted([2, 1, 0], key=lambda a: -costs[a])   # stable: z before y before x on ties
    ranges = [range(counts[a]) for a in axes]
    order = []
    for combo in itertools.product(*ranges):
        index = [0, 0, 0]
        for axis, i in zip(axes, combo):
            index[axis] = i
        order.append((index[0], index[1], index[2]))
    return order


def cell_count(counts: tuple[int, int, int]) -> int:
    return counts[0] * counts[1] * counts[2]


def varied_seed(seed: int, index: tuple[int, int, int], counts: tuple[int, int, int],
                vary: tuple[bool, bool, bool]) -> int:
    """A1111's "Vary seeds for X/Y/Z": offset the cell's seed by its position along the chosen axes."""
    ix, iy, iz = index
    xdim = counts[0] if vary[0] else 1
    ydim = counts[1] if vary[1] else 1
    return seed + (ix if vary[0] else 0) + (iy * xdim if vary[1] else 0) + (iz * xdim * ydim if vary[2] else 0)


def axis_infotext(x_opt: AxisOption, x_text: str, y_opt: AxisOption, y_text: str, z_opt: AxisOption,
                  z_text: str) -> dict[str, str]:
    """The grid's extra infotext keys, as A1111 writes them (`Script`, `X Type`, `X Values`, …)."""
    params = {"Script": "X/Y/Z plot"}
    for name, opt, text in (("X", x_opt, x_text), ("Y", y_opt, y_text), ("Z", z_opt, z_text)):
        if opt.type != "nothing":
            params[f"{name} Type"] = opt.label
            params[f"{name} Values"] = text
    return params


@dataclass
class XYZGrids:
    grid: Image.Image                 # the whole plot (Z sub-grids side by side, titled)
    sub_grids: list[Image.Image]      # one labelled X×Y grid per Z value


def draw_xyz(cells: dict[tuple[int, int, int], Image.Image | None], x_labels: Sequence[str],
             y_labels: Sequence[str], z_labels: Sequence[str], draw_legend: bool = True,
             margin: int = 0) -> XYZGrids:
    """Each Z value's X×Y grid (X across, Y down), labelled when `draw_legend`; then all of them in a row."""
    subs = []
    for iz in range(len(z_labels)):
        rows = [[cells.get((ix, iy, iz)) for ix in range(len(x_labels))] for iy in range(len(y_labels))]
        if draw_legend:
            subs.append(grids.annotated_grid(rows, col_labels=list(x_labels), row_labels=list(y_labels),
                                             margin=margin))
        else:
            subs.append(grids.paste_cells(rows, margin, grids.BACKGROUND))
    if len(subs) == 1:
        return XYZGrids(subs[0], subs)
    titles = list(z_labels) if draw_legend else []
    return XYZGrids(grids.grid_of_grids(subs, titles, margin=margin), subs)


def context_for(engine) -> AxisContext:
    """The axis context of an engine: its samplers, schedule types and checkpoints."""
    samplers: dict[str, str] = {}
    for info in engine.samplers:
        for key in (info.name, *info.aliases):
            samplers.setdefault(key.lower(), info.name)
    schedules: dict[str, str] = {}
    for info in engine.schedules:
        for key in (info.name, info.label, *info.aliases):
            schedules.setdefault(key.lower(), info.label)
    names = [m.name for m in engine.models.checkpoints()]

    def resolve(query: str) -> str | None:
        hit = closest_checkpoint(query, names)
        if hit is not None:
            return hit
        found = engine.models.resolve_or_none(query)
        return found.name if found is not None else None

    return AxisContext(samplers=samplers, schedules=schedules, resolve_checkpoint=resolve,
                       checkpoint_choices=names, sampler_choices=[i.name for i in engine.samplers],
                       schedule_choices=[i.label for i in engine.schedules])


def fix_seed(p, rng: random.Random | None = None) -> None:
    """A1111's processing.fix_seed: a seed (and variation seed) of -1 becomes a fixed random one."""
    rng = rng or random.Random()
    if p.seed is None or p.seed == -1:
        p.seed = rng.randrange(MAX_SEED)
    if getattr(p, "subseed", None) is None or p.subseed == -1:
        p.subseed = rng.randrange(MAX_SEED)
