"""A1111's prompt language, as text → text and text → weighted segments. No tensors here.

Four independent layers, applied in this order (as A1111 does):

1. Extra-network tags `<lora:name:1>` are cut out of the text (`parse_extra_networks`).
2. `AND` splits a positive prompt into weighted sub-prompts (`split_and`, composable diffusion).
3. Prompt editing `[from:to:when]` / `[to:when]` / `[from::when]` and alternation `[a|b]` turn one prompt
   into a text per step (`prompt_schedule`). The grammar is A1111's Lark grammar, parsed here by a small
   recursive-descent parser; a prompt it does not accept is used verbatim.
4. Emphasis `(a)`, `[a]`, `(a:1.3)`, escapes and `BREAK` turn one text into weighted segments
   (`parse_prompt_attention`); unbalanced brackets never fail (an open bracket runs to the end).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
DEFAULT_EMPHASIS = "Original"
BREAK_SEGMENT = ("BREAK", -1.0)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ------------------------------------------------------------------------------------------- emphasis

_ATTENTION_TOKEN = re.compile(r"""
    \\[()\[\]\\]          # escaped bracket or backslash
  | \\                    # a lone backslash (dropped, as A1111 does)
  | \( | \[               # openers
  | :\s*([+-]?[.\d]+)\s*\)  # ':1.3)' closes a round bracket with an explicit weight
  | \) | \]               # closers
  | [^\\()\[\]:]+         # plain text
  | :                     # a ':' that is not a weight is plain text
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Text → [(segment, weight)], runs of equal weight merged; ("BREAK", -1) marks a forced chunk break.

    `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w; nesting multiplies; an unclosed bracket applies to the rest of the
    text; a stray closer is plain text; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters.
    """
    out: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for seg in out[start:]:
            seg[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            out.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(out))
        elif tok == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), _to_float(weight))
        elif tok == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(tok)):
                if i > 0:
                    out.append(list(BREAK_SEGMENT))
                out.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)
    return _merge_runs(out)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:   # e.g. "1.2.3": A1111 would raise; treat the bracket as a plain ×1.1
        return ROUND_MULTIPLIER


def _merge_runs(segments: list[list]) -> list[tuple[str, float]]:
    if not segments:
        return [("", 1.0)]
    merged = [segments[0]]
    for seg in segments[1:]:
        if seg[1] == merged[-1][1]:
            merged[-1][0] += seg[0]
        else:
            merged.append(seg)
    return [(t, w) for t, w in merged]


def segments_for_mode(text: str, emphasis: str) -> list[tuple[str, float]]:
    """Segments as the emphasis mode sees them: 'None' keeps brackets literal, 'Ignore' drops the weights."""
    if emphasis == "None":
        return [(text, 1.0)]
    segments = parse_prompt_attention(text)
    if emphasis == "Ignore":
        return [(t, w if w == -1.0 and t == "BREAK" else 1.0) for t, w in segments]
    return segments


# ------------------------------------------------------------------------------------ extra networks

_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkCall:
    """One `<kind:arg:arg:key=value>` tag. `positional[0]` is the network's name."""
    kind: str
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, kind: str, args: str) -> "ExtraNetworkCall":
        call = cls(kind)
        for item in args.split(":"):
            key, eq, value = item.partition("=")
            if eq:
                call.named[key] = value
            else:
                call.positional.append(item)
        return call

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""


def parse_extra_networks(text: str) -> tuple[str, list[ExtraNetworkCall]]:
    """Remove every `<kind:...>` tag; return the remaining text and the tags in order."""
    calls: list[ExtraNetworkCall] = []

    def take(m: re.Match) -> str:
        calls.append(ExtraNetworkCall.from_args(m.group(1), m.group(2)))
        return ""

    return _EXTRA_NET.sub(take, text), calls


# ----------------------------------------------------------------------------------------------- AND

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(text: str) -> list[tuple[str, float]]:
    """Composable diffusion: 'a cat :1.2 AND a dog' → [('a cat', 1.2), (' a dog', 1.0)].

    As in A1111, a trailing ':number' sets a sub-prompt's weight even when there is no AND.
    """
    parts = []
    for sub in _AND.split(text):
        m = _TRAILING_WEIGHT.search(sub)
        if m is None:
            parts.append((sub, 1.0))
        else:
            parts.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return parts


# ---------------------------------------------------------------------------- editing and alternation

@dataclass
class Scheduled:
    before: list | None   # None for `[to:when]`
    after: list
    when: str             # the NUMBER as written: a '.' makes it a fraction of the steps


@dataclass
class Alternate:
    options: list[list]


_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SPACE = re.compile(r"\s+")
_STRAY = "[]():"


class _Fail(Exception):
    pass


class _ScheduleParser:
    """Recursive descent for A1111's grammar:

        start:  (prompt | /[][():]/+)*
        prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
        emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
        scheduled:  "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
        alternate:  "[" prompt ("|" [prompt])+ "]"
        plain: /([^\\\\\\[\\]():|]|\\\\.)+/

    Constructs are tried first; at the top level a bracket that starts no construct is literal text.
    """

    def __init__(self, text: str):
        self.text = text
        # Packrat memo: a failed bracket is retried by several alternatives, which would be exponential in
        # the nesting depth without it.
        self._prompts: dict[int, tuple[list, int]] = {}
        self._constructs: dict[int, tuple[object, int] | None] = {}

    def parse(self) -> list:
        nodes, pos = [], 0
        while pos < len(self.text):
            items, pos = self.prompt(pos)
            nodes += items
            if pos < len(self.text):
                if self.text[pos] not in _STRAY:
                    raise _Fail(pos)   # e.g. a top-level '|' or a trailing lone backslash
                nodes.append(self.text[pos])
                pos += 1
        return nodes

    def prompt(self, pos: int) -> tuple[list, int]:
        if pos not in self._prompts:
            self._prompts[pos] = self._prompt(pos)
        nodes, end = self._prompts[pos]
        return list(nodes), end

    def _prompt(self, pos: int) -> tuple[list, int]:
        nodes = []
        while pos < len(self.text):
            ch = self.text[pos]
            m = _PLAIN.match(self.text, pos)
            if m:
                nodes.append(m.group(0))
                pos = m.end()
            elif ch in "([":
                try:
                    node, pos = self.construct(pos)
                except _Fail:
                    break
                nodes.append(node)
            else:
                break
        return nodes, pos

    def construct(self, pos: int) -> tuple[object, int]:
        if pos not in self._constructs:
            self._constructs[pos] = self._construct(pos)
        if self._constructs[pos] is None:
            raise _Fail(pos)
        return self._constructs[pos]

    def _construct(self, pos: int) -> tuple[object, int] | None:
        attempts = (self.round,) if self.text[pos] == "(" else (self.scheduled3, self.scheduled2, self.alternate, self.square)
        for attempt in attempts:
            try:
                return attempt(pos)
            except _Fail:
                continue
        return None

    def expect(self, pos: int, ch: str) -> int:
        if pos < len(self.text) and self.text[pos] == ch:
            return pos + 1
        raise _Fail(pos)

    def round(self, pos: int) -> tuple[list, int]:
        inner, pos = self.prompt(pos + 1)
        if pos < len(self.text) and self.text[pos] == ":":
            weight, pos = self.prompt(pos + 1)
            return ["(", *inner, ":", *weight, ")"], self.expect(pos, ")")
        return ["(", *inner, ")"], self.expect(pos, ")")

    def square(self, pos: int) -> tuple[list, int]:
        inner, pos = self.prompt(pos + 1)
        return ["[", *inner, "]"], self.expect(pos, "]")

    def when(self, pos: int) -> tuple[str, int]:
        pos = self.space(pos)
        m = _NUMBER.match(self.text, pos)
        if not m:
            raise _Fail(pos)
        return m.group(0), self.expect(self.space(m.end()), "]")

    def space(self, pos: int) -> int:
        m = _SPACE.match(self.text, pos)
        return m.end() if m else pos

    def scheduled3(self, pos: int) -> tuple[Scheduled, int]:
        before, pos = self.prompt(pos + 1)
        after, pos = self.prompt(self.expect(pos, ":"))
        when, pos = self.when(self.expect(pos, ":"))
        return Scheduled(before, after, when), pos

    def scheduled2(self, pos: int) -> tuple[Scheduled, int]:
        after, pos = self.prompt(pos + 1)
        when, pos = self.when(self.expect(pos, ":"))
        return Scheduled(None, after, when), pos

    def alternate(self, pos: int) -> tuple[Alternate, int]:
        first, pos = self.prompt(pos + 1)
        options = [first]
        while pos < len(self.text) and self.text[pos] == "|":
            option, pos = self.prompt(pos + 1)
            options.append(option)
        if len(options) < 2:
            raise _Fail(pos)
        return Alternate(options), self.expect(pos, "]")


def parse_schedule_tree(text: str) -> list | None:
    """The prompt's syntax tree (str, list, Scheduled, Alternate nodes), or None if it does not parse."""
    try:
        return _ScheduleParser(text).parse()
    except _Fail:
        return None


def _resolve_when(when: str, steps: int, hires_steps: int | None, base_steps: int, old: bool) -> int:
    value = float(when)
    if old:
        value = value * steps if value < 1 else value
    elif "." in when:
        value = (value - (1.0 if hires_steps is not None else 0.0)) * steps
    else:
        value = value - (base_steps if hires_steps is not None else 0)
    return min(steps, int(value))


def _collect_steps(nodes: list, steps: int, resolve) -> set[int]:
    found: set[int] = set()
    for node in nodes:
        if isinstance(node, list):
            found |= _collect_steps(node, steps, resolve)
        elif isinstance(node, Scheduled):
            when = resolve(node.when)
            if when >= 1:
                found.add(when)
            found |= _collect_steps((node.before or []) + node.after, steps, resolve)
        elif isinstance(node, Alternate):
            found |= set(range(1, steps + 1))
            for option in node.options:
                found |= _collect_steps(option, steps, resolve)
    return found


def _render(nodes: list, step: int, resolve) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_render(node, step, resolve))
        elif isinstance(node, Scheduled):
            out.append(_render(node.before or [], step, resolve) if step <= resolve(node.when)
                       else _render(node.after, step, resolve))
        elif isinstance(node, Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, resolve))
    return "".join(out)


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None,
                    use_old_scheduling: bool = False) -> list[tuple[int, str]]:
    """[(end_at_step, text)], ascending, the last ending at the step count (A1111's
    get_learned_conditioning_prompt_schedules for one prompt).

    A `when` with a '.' is a fraction of the steps, else a step number. For the hires pass, pass its step
    count as `hires_steps` and the base steps as `steps`: fractions then use the range 1–2 and step
    numbers are offset by the base steps.
    """
    if use_old_scheduling:
        hires_steps = None
    base_steps = steps
    total = hires_steps if hires_steps is not None else steps
    tree = parse_schedule_tree(text)
    if tree is None:
        return [(total, text)]

    def resolve(when: str) -> int:
        return _resolve_when(when, total, hires_steps, base_steps, use_old_scheduling)

    ends = sorted(_collect_steps(tree, total, resolve) | {total})
    return [(end, _render(tree, end, resolve)) for end in ends]
