"""Conditioning over the sampling steps: prompt editing, alternation and composable `AND`.

A job's prompts become `BatchConditioning` objects: per batch image, one or more weighted parts (`AND`),
each a `CondSchedule` of (end_at_step, Conditioning). Every distinct text is encoded once per job; a step
whose texts did not change reuses the same tensors (and the same stacked batch).

Lengths, as A1111 does them: the texts of one prompt's schedule are padded with empty chunks to a common
chunk count (they are encoded as one batch there); different prompts stacked on one side (AND parts,
batch images) are padded by repeating their last token vector (`reconstruct_multicond_batch`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .conditioning import Conditioning, PromptEncoder, PromptOptions
from .prompt_parser import parse_extra_networks, prompt_schedule, split_and


@dataclass
class CondSchedule:
    """One prompt's conditioning: [(end_at_step, Conditioning)], ascending, the last ending at the step count."""
    entries: list[tuple[int, Conditioning]]

    def at(self, step: int) -> Conditioning:
        """A1111's rule: the first entry with step <= end_at_step (`step` counts from 0)."""
        for end, cond in self.entries:
            if step <= end:
                return cond
        return self.entries[-1][1]

    @classmethod
    def constant(cls, cond: Conditioning) -> "CondSchedule":
        return cls([(1 << 30, cond)])


@dataclass
class StepConds:
    """The conditioning rows one step runs: `owners[j]` is the batch image of row j, `weights[j]` its AND weight."""
    cond: Conditioning
    owners: list[int]
    weights: list[float]

    @property
    def simple(self) -> bool:
        """One row per image in order, each of weight 1: plain classifier-free guidance."""
        return self.owners == list(range(len(self.owners))) and all(w == 1.0 for w in self.weights)


@dataclass
class BatchConditioning:
    """Per batch image, its (schedule, weight) parts. `empty` is the encoding of "" (one chunk), for padding."""
    parts: list[list[tuple[CondSchedule, float]]]
    empty: Conditioning | None = None
    device: torch.device | None = None
    _stacked: dict[tuple, Conditioning] = field(default_factory=dict, repr=False)

    def at(self, step: int) -> StepConds:
        conds, owners, weights = [], [], []
        for image, parts in enumerate(self.parts):
            for schedule, weight in parts:
                conds.append(schedule.at(step))
                owners.append(image)
                weights.append(weight)
        key = tuple(id(c) for c in conds)
        if key not in self._stacked:
            self._stacked = {key: stack_conditioning(conds, self.device)}   # keep only the current step's
        return StepConds(self._stacked[key], owners, weights)

    def lengths(self) -> set[int]:
        return {cond.context.shape[1] for parts in self.parts for s, _ in parts for _, cond in s.entries}


def _pad_last(context: torch.Tensor, tokens: int) -> torch.Tensor:
    missing = tokens - context.shape[1]
    if missing <= 0:
        return context
    return torch.cat([context, context[:, -1:].expand(-1, missing, -1)], dim=1)


def stack_conditioning(conds: list[Conditioning], device: torch.device | None = None) -> Conditioning:
    """One batch from several conditionings; shorter contexts repeat their last vector (A1111)."""
    first = conds[0]
    if all(c is first for c in conds):
        context = first.context.expand(len(conds), *first.context.shape[1:])
        pooled = None if first.pooled is None else first.pooled.expand(len(conds), *first.pooled.shape[1:])
    else:
        tokens = max(c.context.shape[1] for c in conds)
        context = torch.cat([_pad_last(c.context, tokens) for c in conds])
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in conds])
    if device is not None:
        context = context.to(device)
        pooled = None if pooled is None else pooled.to(device)
    return Conditioning(context, pooled)


def pad_with_empty(cond: Conditioning, tokens: int, empty: Conditioning) -> Conditioning:
    """Append copies of the empty prompt's chunk until the context has `tokens` tokens (A1111's pad_cond)."""
    missing = tokens - cond.context.shape[1]
    if missing <= 0:
        return cond
    chunk = empty.context.to(cond.context.device, cond.context.dtype)
    repeats = missing // chunk.shape[1]
    pad = chunk.expand(cond.context.shape[0], -1, -1).repeat(1, repeats, 1)
    return Conditioning(torch.cat([cond.context, pad], dim=1), cond.pooled)


class ConditioningCache:
    """Encodes the prompts of one job; each distinct (text, chunk count) once.

    Records the embeddings the prompts used (for "TI hashes"). Extra-network tags are removed from the text
    here; which networks they name is the networks package's business.
    """

    def __init__(self, encoder: PromptEncoder, clip_skip: int = 1, options: PromptOptions | None = None,
                 embeddings=None):
        self.encoder = encoder
        self.clip_skip = clip_skip
        self.options = options or PromptOptions()
        self.embeddings = embeddings
        self.used_embeddings: dict[str, object] = {}
        self._tokens: dict[str, object] = {}
        self._encoded: dict[tuple[str, int], Conditioning] = {}
        self._schedules: dict[tuple, CondSchedule] = {}
        self._empty: Conditioning | None = None

    def _tokenized(self, text: str):
        if text not in self._tokens:
            tokens = self.encoder.tokenize_text(text, self.options, self.embeddings)
            for emb in tokens.embeddings:
                self.used_embeddings.setdefault(emb.name, emb)
            self._tokens[text] = tokens
        return self._tokens[text]

    def encode(self, text: str, min_chunks: int = 1) -> Conditioning:
        key = (text, min_chunks)
        if key not in self._encoded:
            tokens = self._tokenized(text)
            self._encoded[key] = self.encoder.encode_tokens(tokens, self.clip_skip, self.options, min_chunks)
        return self._encoded[key]

    def empty(self) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode("")
        return self._empty

    def schedule(self, text: str, steps: int, hires_steps: int | None = None) -> CondSchedule:
        key = (text, steps, hires_steps)
        if key not in self._schedules:
            entries = prompt_schedule(text, steps, hires_steps)
            chunks = max(len(self._tokenized(t).chunks) for _, t in entries)
            self._schedules[key] = CondSchedule([(end, self.encode(t, chunks)) for end, t in entries])
        return self._schedules[key]

    def positive(self, prompts: list[str], steps: int, hires_steps: int | None = None,
                 device: torch.device | None = None) -> BatchConditioning:
        """Prompts with `AND` (composable diffusion): each part has its own schedule and weight."""
        parts = []
        for prompt in prompts:
            text = parse_extra_networks(prompt)[0]
            parts.append([(self.schedule(sub, steps, hires_steps), w) for sub, w in split_and(text)])
        return BatchConditioning(parts, self.empty(), device)

    def negative(self, prompts: list[str], steps: int, hires_steps: int | None = None,
                 device: torch.device | None = None) -> BatchConditioning:
        """Negative prompts: scheduling but no `AND`, as A1111."""
        parts = [[(self.schedule(parse_extra_networks(p)[0], steps, hires_steps), 1.0)] for p in prompts]
        return BatchConditioning(parts, self.empty(), device)
