"""Prompts from file or textbox: one job per non-empty line.

A line is a plain prompt, or (when it contains `--`) command-line style options as A1111 reads them:
  --prompt "a cat" --negative_prompt "blurry" --steps 10 --seed 5 --cfg_scale 7 --sampler_name "Euler a"
`--prompt` and `--negative_prompt` take every word up to the next `--option`; every other option takes
one value. A line that does not parse is used as a plain prompt (A1111 does the same, after logging).
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


def _bool(text: str) -> bool:
    return text == "true"


# option → converter (A1111's prompt_tags); sd_model picks a checkpoint for the line (A1111 lists it
# but cannot use it; here it works)
OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str,
    "prompt": str, "negative_prompt": str, "styles": str,
    "seed": int, "subseed_strength": float, "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int,
    "sampler_index": int, "sampler_name": str, "scheduler": str, "batch_size": int, "n_iter": int, "steps": int,
    "cfg_scale": float, "width": int, "height": int, "restore_faces": _bool, "tiling": _bool,
    "do_not_save_samples": _bool, "do_not_save_grid": _bool, "denoising_strength": float, "clip_skip": int,
}
MULTIWORD = ("prompt", "negative_prompt")


class LineError(ValueError):
    pass


def parse_options(line: str) -> dict[str, Any]:
    """`--key value …` → {key: converted value}; raises LineError on a malformed line."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise LineError(f"cannot split {line!r}: {exc}") from None
    res: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise LineError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise LineError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in MULTIWORD:
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            res[tag] = " ".join(words)
            continue
        convert = OPTION_TYPES.get(tag)
        if convert is None:
            raise LineError(f"unknown commandline option: {arg}")
        try:
            res[tag] = convert(args[pos + 1])
        except ValueError:
            raise LineError(f"{arg}: cannot read {args[pos + 1]!r}") from None
        pos += 2
    return res


@dataclass
class LineJob:
    line: str
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None          # why the line was taken as a plain prompt


def parse_line(line: str) -> LineJob:
    if "--" not in line:
        return LineJob(line, {"prompt": line})
    try:
        return LineJob(line, parse_options(line))
    except LineError as exc:
        log.warning("Error parsing line %r as commandline: %s", line, exc)
        return LineJob(line, {"prompt": line}, error=str(exc))


def parse_lines(text: str) -> list[LineJob]:
    """One job per non-blank line (lines are stripped)."""
    return [parse_line(line) for line in (raw.strip() for raw in (text or "").splitlines()) if line]


def combine_prompt(base: str, line_prompt: str | None, position: str = "start") -> str:
    """The line's prompt with the UI prompt: line first ("start") or last ("end"); either alone if the other is empty."""
    if position not in ("start", "end"):
        raise ValueError(f"prompt position must be 'start' or 'end' (got {position!r})")
    if not line_prompt:
        return base
    if not base:
        return line_prompt
    return f"{line_prompt} {base}" if position == "start" else f"{base} {line_prompt}"


def job_count(jobs: list[LineJob], default_n_iter: int) -> int:
    return sum(int(job.options.get("n_iter", default_n_iter)) for job in jobs)
