"""The callback registry of one extension host, and the parameter objects callbacks receive.

A callback is registered for one event name (`CALLBACK_EVENTS`) and remembers the extension and script file
that registered it, so that a failing callback can be reported with its owner and an unloaded or failed
extension's callbacks can be dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# event name → the arguments its callbacks receive (documented in docs/extensions.md)
CALLBACK_EVENTS: dict[str, str] = {
    "app_started": "(app, server) — server is the FastAPI app, or None without an HTTP server",
    "model_loaded": "(model) — the engine's SDModel that was just loaded",
    "script_unloaded": "() — the host is unloading the extension's scripts",
    "ui_tabs": "() -> list[(gr.Blocks, title, elem_id)] — extra top-level tabs",
    "ui_settings": "(settings: ExtensionSettings) — add options with settings.add_option(...)",
    "before_image_saved": "(params: ImageSaveParams) — may replace params.image / params.pnginfo['parameters']",
    "image_saved": "(params: ImageSaveParams) — params.filename is the saved file",
    "infotext_pasted": "(infotext: str, params: dict) — may change the parsed fields in place",
    "cfg_denoiser": "(params: CFGDenoiserParams) — before the UNet; may replace x, sigma, text_cond, text_uncond",
    "cfg_denoised": "(params: CFGDenoisedParams) — after the UNet; may replace x (cond rows then uncond rows)",
    "cfg_after_cfg": "(params: AfterCFGCallbackParams) — after guidance; may replace x (the denoised result)",
}


@dataclass
class Callback:
    event: str
    fn: Callable
    extension: str            # owning extension's name ("" when registered outside extension code)
    script: str = ""          # the script file that registered it
    name: str = ""            # optional name given at registration (A1111's `name=`)


class CallbackRegistry:
    """Callbacks by event, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Callback]] = {event: [] for event in CALLBACK_EVENTS}

    def add(self, event: str, fn: Callable, extension: str = "", script: str = "", name: str = "") -> Callback:
        if event not in self._entries:
            raise ValueError(f"unknown callback event {event!r}; known: {', '.join(self._entries)}")
        if not callable(fn):
            raise TypeError(f"callback for {event} must be callable, got {fn!r}")
        entry = Callback(event, fn, extension, script, name or getattr(fn, "__qualname__", repr(fn)))
        self._entries[event].append(entry)
        return entry

    def entries(self, event: str) -> list[Callback]:
        return list(self._entries[event])

    def remove(self, keep: Callable[[Callback], bool]) -> list[Callback]:
        """Drop every callback for which `keep` is false; returns the dropped ones."""
        dropped = []
        for event, entries in self._entries.items():
            dropped += [e for e in entries if not keep(e)]
            self._entries[event] = [e for e in entries if keep(e)]
        return dropped

    def count(self) -> int:
        return sum(len(v) for v in self._entries.values())


# ---- what callbacks receive ----------------------------------------------------------------------

@dataclass
class ImageSaveParams:
    """An image about to be saved (before_image_saved) or just saved (image_saved)."""
    image: Any                                   # PIL image
    p: Any                                       # the job's `p` (GenerationParams or Processing)
    filename: str | None                         # None before saving; the final path after
    pnginfo: dict[str, Any] = field(default_factory=dict)   # {"parameters": infotext} (None when not embedded)


@dataclass
class CFGDenoiserParams:
    """Before the UNet runs, in one sampler call of the guided denoiser.

    `text_cond` / `text_uncond` are `webui.engine.conditioning.Conditioning` objects (`.context` tensor
    [rows, tokens, width], `.pooled` for SDXL) — one cond row per image (more with AND prompts).
    """
    x: Any                       # noisy latent [batch, C, H, W]
    image_cond: Any              # extra UNet channels (inpaint/depth models) or None
    sigma: Any                   # [batch]
    sampling_step: int           # model calls so far in this pass
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None         # the CFGDenoiser object


@dataclass
class CFGDenoisedParams:
    """After the UNet: `x` is the cond rows' denoised predictions followed by the uncond rows' (A1111's layout).
    `cond_denoised` / `uncond_denoised` are the two halves (None for a side that did not run)."""
    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any = None
    cond_denoised: Any = None
    uncond_denoised: Any = None


@dataclass
class AfterCFGCallbackParams:
    """After classifier-free guidance: `x` is the guided denoised prediction the sampler will use."""
    x: Any
    sampling_step: int
    total_sampling_steps: int
