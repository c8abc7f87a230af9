"""Applying several networks to a model's weights, and taking them off again exactly.

Two ways, both exact to the bit on restore:

- **Swap** (CPU, the default there): each affected parameter's `.data` is pointed at a new tensor
  W + Σ multiplier·ΔW, and restoring points it back at the original tensor object, so restore costs nothing.
  The patched tensors of the last set are kept, so applying the same networks with the same weights again
  (the next image, the next job) is only pointer swaps; they are recomputed when the set, a weight, a file or
  the model's own weights change, into the same tensors where the same layers are patched again.
- **In place** (GPU): a second patched copy of the weights in VRAM is what users cannot afford, so the
  weights are edited in place and a copy of each original is kept in CPU RAM (taken the first time a layer is
  patched), which restore copies back. Restoring is lazy: after a job the weights stay patched, so the next
  job with the same set costs nothing; a job with another set or none restores first.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .lora_files import ParsedNetwork
from .lora_formats import UnsupportedModule, compute_delta
from .lora_keys import Target, build_key_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkUse:
    """One `<lora:...>` tag: the name as written, text-encoder and UNet multipliers, optional rank limit."""
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


class NetworkMismatch(ValueError):
    """The network does not fit this model (another family, or a different architecture)."""


@dataclass
class ApplyReport:
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # name → reason
    reused: bool = False           # the cached patched weights were swapped in; nothing was computed


@dataclass
class _Patch:
    """The tensors one applied set swaps in, with the originals they were computed from."""
    signature: tuple
    tensors: dict[str, tuple[nn.Parameter, torch.Tensor, torch.Tensor]]   # key → (param, original, patched)
    stamps: dict[str, tuple[int, int]]                                      # key → (data_ptr, version)
    applied: list[str]
    skipped: dict[str, str]


@dataclass
class _ModelState:
    key_map: dict[str, Target]
    active: _Patch | None = None
    cached: _Patch | None = None
    backups: dict[str, torch.Tensor] = field(default_factory=dict)   # in-place mode: key → original, on CPU


def _stamp(param: nn.Parameter) -> tuple[int, int]:
    return param.data.data_ptr(), param._version


class NetworkApplier:
    """Per-model network state. Keyed weakly by the model's UNet, so a dropped model frees its state."""

    def __init__(self, keep_patched: bool = True, in_place: bool = False):
        self.keep_patched = keep_patched
        self.in_place = in_place
        self._states: weakref.WeakKeyDictionary[nn.Module, _ModelState] = weakref.WeakKeyDictionary()

    def _state(self, model) -> _ModelState:
        state = self._states.get(model.unet)
        if state is None:
            state = self._states[model.unet] = _ModelState(build_key_map(model))
        return state

    def is_applied(self, model) -> bool:
        state = self._states.get(model.unet)
        return state is not None and state.active is not None

    def apply(self, model, networks: list[tuple[NetworkUse, ParsedNetwork]]) -> ApplyReport:
        """Make exactly `networks` active on `model` (restoring whatever was active before)."""
        state = self._state(model)
        active = [(use, net) for use, net in networks if use.te != 0 or use.unet != 0]
        signature = tuple((net.stamp, use.te, use.unet, use.dyn) for use, net in active)
        if state.active is not None and state.active.signature == signature:
            return ApplyReport(list(state.active.applied), dict(state.active.skipped), reused=True)
        self.restore(model)
        if not active:
            return ApplyReport()
        if self.in_place:
            state.active = self._compute(state, signature, active, {})
            return ApplyReport(list(state.active.applied), dict(state.active.skipped))
        patch = state.cached
        reused = patch is not None and patch.signature == signature and self._still_valid(patch)
        if not reused:
            spare = {key: patched for key, (_, _, patched) in patch.tensors.items()} if patch else {}
            state.cached = patch = None
            patch = self._compute(state, signature, active, spare)
        for key, (param, _, patched) in patch.tensors.items():
            param.data = patched
        state.active = patch
        state.cached = patch if self.keep_patched else None
        return ApplyReport(list(patch.applied), dict(patch.skipped), reused=reused)

    def restore(self, model) -> None:
        state = self._states.get(model.unet)
        if state is None or state.active is None:
            return
        for key, (param, original, _) in state.active.tensors.items():
            if original is None:
                param.data.copy_(state.backups[key])
            else:
                param.data = original
        state.active = None

    def release(self, model) -> None:
        """A job that used the networks ended. Swap mode restores (free); in-place mode keeps the weights
        patched until a job asks for another set (see the module docstring)."""
        if not self.in_place:
            self.restore(model)

    @staticmethod
    def _still_valid(patch: _Patch) -> bool:
        return all(_stamp(param) == patch.stamps[key] for key, (param, _, _) in patch.tensors.items())

    def _compute(self, state: _ModelState, signature: tuple, active: list[tuple[NetworkUse, ParsedNetwork]],
                 spare: dict[str, torch.Tensor]) -> _Patch:
        """`spare`: the previous set's patched tensors, no longer referenced by any parameter. A key patched
        again is written into its old tensor instead of a new one, so a change of set allocates only the
        transient ΔW of each layer."""
        sums: dict[str, list] = {}   # target name → [target, ΔW sum, Δb sum]
        applied, skipped = [], {}
        for use, net in active:
            try:
                deltas = self._network_deltas(state.key_map, net, use)
            except NetworkMismatch as exc:
                log.warning("LoRA %s skipped: %s", use.name, exc)
                skipped[use.name] = str(exc)
                continue
            applied.append(use.name)
            while deltas:   # fold into the running sums, freeing each network's ΔW as it goes
                name, (target, dw, db) = deltas.popitem()
                entry = sums.setdefault(name, [target, None, None])
                entry[1] = dw if entry[1] is None else entry[1].add_(dw)
                if db is not None:
                    entry[2] = db if entry[2] is None else entry[2].add_(db)
        tensors, stamps = {}, {}
        # Each ΔW sum (a tensor of its own) becomes the patched tensor in place and leaves `sums` at once, so
        # the peak is the original weights plus one patched copy, not original + all ΔW + all patched.
        while sums:
            name, (target, dw, db) = sums.popitem()
            for suffix, delta in (("weight", dw), ("bias", db)):
                param = getattr(target.module, suffix, None)
                if delta is None or param is None:
                    continue
                original, key = param.data, f"{name}.{suffix}"
                if self.in_place:
                    if key not in state.backups:
                        state.backups[key] = original.detach().to("cpu", copy=True)
                    tensors[key] = (param, None, original.add_(delta))
                else:
                    tensors[key] = (param, original, _patched(original, delta, spare.pop(key, None)))
                stamps[key] = _stamp(param)
        return _Patch(signature, tensors, stamps, applied, skipped)

    @staticmethod
    def _network_deltas(key_map: dict[str, Target], net: ParsedNetwork, use: NetworkUse) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        unmatched, unsupported, mismatched = [], [], []
        matched = 0
        for key, weights in net.modules.items():
            target = key_map.get(key)
            if target is None:
                unmatched.append(key)
                continue
            matched += 1
            multiplier = use.te if target.component == "te" else use.unet
            if multiplier == 0:
                continue
            module = target.module
            try:
                dw, db = compute_delta(weights, module.weight, getattr(module, "bias", None), use.dyn)
            except UnsupportedModule:
                unsupported.append(key)
                continue
            except ValueError:
                mismatched.append(key)
                continue
            out[target.name] = (target, dw.mul_(multiplier), None if db is None else db.mul_(multiplier))
        _check_fit(net, matched, unmatched, unsupported, mismatched)
        return out


def _patched(original: torch.Tensor, delta: torch.Tensor, spare: torch.Tensor | None) -> torch.Tensor:
    """original + delta in original's dtype and memory layout (fast kernels need the layout), written into
    `spare` when it fits. Both ways add in the wider of the two dtypes and round once, so they agree bit for bit."""
    fits = spare is not None and (spare.shape, spare.dtype, spare.device, spare.stride()) == (
        original.shape, original.dtype, original.device, original.stride())
    if fits:
        return spare.copy_(original).add_(delta)
    patched = delta.add_(original).to(original.dtype)
    if patched.stride() != original.stride():
        patched = torch.empty_like(original).copy_(patched)
    return patched


def _check_fit(net: ParsedNetwork, matched: int, unmatched: list, unsupported: list, mismatched: list) -> None:
    hint = net.family_hint()
    made_for = f" (it looks made for {hint.upper()})" if hint else ""
    if mismatched:
        raise NetworkMismatch(f"{len(mismatched)} layers have other shapes than this model's{made_for}")
    if matched == 0 and unmatched:
        raise NetworkMismatch(f"none of its {len(unmatched)} layers exist in this model{made_for}")
    if len(unmatched) > matched:
        raise NetworkMismatch(f"only {matched} of {matched + len(unmatched)} layers exist in this model{made_for}")
    if unmatched:
        log.warning("LoRA %s: %d layers not in this model, ignored (e.g. %s)", net.file.name, len(unmatched), unmatched[0])
    if unsupported:
        log.warning("LoRA %s: %d modules of an unsupported type ignored (e.g. %s)", net.file.name,
                    len(unsupported), unsupported[0])
