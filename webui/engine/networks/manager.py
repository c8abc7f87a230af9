"""From a prompt's `<lora:...>` tags to applied weights, and back, with the infotext A1111 writes.

Tag forms (A1111's `extra_networks_lora`): `<lora:name>`, `<lora:name:w>` (both parts), `<lora:name:te:unet>`,
`<lora:name:te:unet:dyn>`, and named `te=`, `unet=`, `dyn=`; `lyco` is an alias of `lora`. As in A1111,
only the positive prompt chooses networks; tags anywhere are removed from the text the encoder sees.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError
from ..hashing import HashCache
from ..prompt_parser import ExtraNetworkCall, parse_extra_networks
from .apply import ApplyReport, NetworkApplier, NetworkUse
from .lora_files import LoraFile, LoraLibrary, ParsedNetwork

log = logging.getLogger(__name__)
NETWORK_KINDS = ("lora", "lyco")
DEFAULT_MULTIPLIER = 1.0


def _number(call: ExtraNetworkCall, value: str, kind=float):
    try:
        return kind(value)
    except ValueError:
        raise InvalidParameterError("prompt", f"<{call.kind}:{':'.join(call.positional)}>: "
                                              f"{value!r} is not a number") from None


def use_from_call(call: ExtraNetworkCall, default: float = DEFAULT_MULTIPLIER) -> NetworkUse:
    pos, named = call.positional, call.named
    te = _number(call, pos[1]) if len(pos) > 1 else default
    te = _number(call, named["te"]) if "te" in named else te
    unet = _number(call, pos[2]) if len(pos) > 2 else te
    unet = _number(call, named["unet"]) if "unet" in named else unet
    dyn = _number(call, pos[3], int) if len(pos) > 3 else None
    dyn = _number(call, named["dyn"], int) if "dyn" in named else dyn
    return NetworkUse(call.name, te, unet, dyn)


def uses_from_prompt(prompt: str, default: float = DEFAULT_MULTIPLIER) -> list[NetworkUse]:
    _, calls = parse_extra_networks(prompt)
    return [use_from_call(c, default) for c in calls if c.kind in NETWORK_KINDS and c.name]


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")


@dataclass
class Activation:
    report: ApplyReport
    hashes: dict[str, str] = field(default_factory=dict)    # name → 12-hex hash of networks in use
    seconds: float = 0.0

    def infotext(self) -> dict[str, str]:
        out = {}
        if self.hashes:
            out["Lora hashes"] = ", ".join(f"{_infotext_name(n)}: {h}" for n, h in self.hashes.items())
        if self.report.skipped:
            out["Lora skipped"] = ", ".join(f"{_infotext_name(n)}: {why}" for n, why in self.report.skipped.items())
        return out


class Networks:
    """The engine's LoRA support: the library, the per-model applier, and prompt-driven activation."""

    def __init__(self, lora_dir: Path, hashes: HashCache | None = None, applier: NetworkApplier | None = None):
        self.library = LoraLibrary(lora_dir, hashes)
        self.applier = applier or NetworkApplier()
        self.default_multiplier = DEFAULT_MULTIPLIER

    def files(self) -> list[LoraFile]:
        return self.library.files()

    def refresh(self) -> None:
        self.library.refresh()

    def activate(self, model, prompt: str) -> Activation:
        """Apply the networks the prompt names (and only those) to `model`."""
        started = time.perf_counter()
        loaded: list[tuple[NetworkUse, ParsedNetwork]] = []
        missing: dict[str, str] = {}
        for use in uses_from_prompt(prompt, self.default_multiplier):
            file = self.library.find(use.name)
            if file is None:
                log.warning("LoRA %s not found in %s", use.name, self.library.root)
                missing[use.name] = "not found"
                continue
            try:
                loaded.append((use, self.library.load(file)))
            except Exception as exc:   # a broken file is reported, not fatal
                log.warning("LoRA %s could not be read: %s", use.name, exc)
                missing[use.name] = f"unreadable ({exc})"
        report = self.applier.apply(model, loaded)
        report.skipped = {**missing, **report.skipped}
        hashes = {}
        for use, net in loaded:
            if use.name not in report.skipped:
                hashes[use.name] = self.library.short_hash(net.file) or "unknown"
        return Activation(report, hashes, time.perf_counter() - started)

    def deactivate(self, model) -> None:
        self.applier.restore(model)

    @contextmanager
    def applied(self, model, params) -> Iterator[Activation | None]:
        """Networks of `params.prompt` active on `model` for the block; the weights are restored after it (on
        a GPU only when a later job asks for another set: see `apply.py`).

        Records "Lora hashes" (and "Lora skipped" for networks that were not applied) in the infotext.
        """
        if not uses_from_prompt(params.prompt):
            self.applier.restore(model)
            yield None
            return
        activation = self.activate(model, params.prompt)
        params.extra_generation_params.update(activation.infotext())
        log.info("networks %s applied in %.3fs%s", ", ".join(activation.report.applied) or "(none)",
                 activation.seconds, " (cached)" if activation.report.reused else "")
        try:
            yield activation
        finally:
            self.applier.release(model)
