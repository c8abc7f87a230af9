"""GPU memory modes: keep weights on an offload device (CPU RAM) and move them in only while they run.

- "normal": every module of the current model stays on the compute device.
- "medvram": whole components — the text encoders, the UNet, the VAE — are moved to the compute device by a
  forward pre-hook when they are called; the component that ran before is moved back out. At most one
  component is on the compute device at a time (A1111's --medvram).
- "lowvram": as medvram, but the UNet is split further: its small parts (embeddings, conv_in/out) come in
  with it, while each down block, the mid block and each up block is moved in only for its own forward
  and out again when the next block runs (sequential offload, A1111's --lowvram).

The hooks also move a component's tensor inputs to the compute device, because callers create inputs next
to a module's parameters (e.g. token ids), which sit on the offload device between calls.

Attention: diffusers' UNet and VAE use `AttnProcessor2_0`, i.e. torch's scaled_dot_product_attention (SDPA,
which picks flash / memory-efficient kernels where the device has them); `use_sdpa` makes that explicit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import precision, vae_tiling
from .devices import MEMORY_MODES, DeviceConfig
UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")
Mover = Callable[[nn.Module, torch.device], Any]


def _default_mover(module: nn.Module, device: torch.device) -> None:
    module.to(device)


@dataclass(eq=False)
class Group:
    """Modules that move together; `slot` groups are mutually exclusive on the compute device."""
    name: str
    modules: list[nn.Module]
    slot: str                  # "component" or "block"


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


@dataclass
class Offloader:
    """Moves groups between `compute` and `offload` on demand. `mover(module, device)` does each move."""
    compute: torch.device
    offload: torch.device
    mover: Mover = _default_mover
    active: dict[str, Group | None] = field(default_factory=lambda: {"component": None, "block": None})
    _hooked: dict[int, list] = field(default_factory=dict)   # id(hooked module) → hook handles

    def activate(self, group: Group) -> None:
        if self.active[group.slot] is group:
            return
        if group.slot == "component":
            self._evict("block")
        self._evict(group.slot)
        for module in group.modules:
            self.mover(module, self.compute)
        self.active[group.slot] = group

    def _evict(self, slot: str) -> None:
        old = self.active[slot]
        if old is not None:
            for module in old.modules:
                self.mover(module, self.offload)
        self.active[slot] = None

    def evict_all(self) -> None:
        self._evict("block")
        self._evict("component")

    # ---- hooks -----------------------------------------------------------------------------------
    def _hook(self, trigger: nn.Module, group: Group, move_inputs: bool) -> None:
        def pre(module, args, kwargs):
            self.activate(group)
            if move_inputs:
                return _to_device(args, self.compute), _to_device(kwargs, self.compute)
            return None

        handle = trigger.register_forward_pre_hook(pre, with_kwargs=True)
        self._hooked.setdefault(id(trigger), []).append(handle)

    def attach(self, model, mode: str) -> None:
        """Hook `model` (an SDModel) for `mode` and move all of it to the offload device."""
        if mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {mode!r}; valid: {', '.join(MEMORY_MODES)}")
        self.detach(model)
        if mode == "normal":
            return
        self.evict_all()
        for module in model.modules():
            self.mover(module, self.offload)
        encoders = [e.model for e in model.prompt_encoder.encoders]
        text = Group("text", encoders, "component")
        for module in encoders:
            self._hook(module, text, move_inputs=True)
        self._attach_unet(model.unet, mode)
        for vae in {id(v): v for v in (model.own_vae, model.vae) if v is not None}.values():
            self.attach_vae(vae)

    def attach_vae(self, vae: nn.Module) -> None:
        """A VAE is one component; the call of any of its parts brings all of it in."""
        if id(vae.decoder) in self._hooked:
            return
        group = Group("vae", [vae], "component")
        for name in VAE_PARTS:
            part = getattr(vae, name, None)
            if isinstance(part, nn.Module):
                self._hook(part, group, move_inputs=True)

    def _attach_unet(self, unet: nn.Module, mode: str) -> None:
        if mode == "medvram":
            self._hook(unet, Group("unet", [unet], "component"), move_inputs=True)
            return
        small = [child for name, child in unet.named_children() if name not in UNET_BLOCKS]
        self._hook(unet, Group("unet", small, "component"), move_inputs=True)
        for index, block in enumerate(_unet_blocks(unet)):
            self._hook(block, Group(f"unet block {index}", [block], "block"), move_inputs=False)

    def detach(self, model) -> None:
        """Remove this model's hooks (its modules stay where they are)."""
        for module in _hook_points(model):
            for handle in self._hooked.pop(id(module), []):
                handle.remove()
        if not any(self.active.values()):
            return   # e.g. "normal" mode: no walk over every submodule
        owned = {id(m) for top in model.modules() for m in top.modules()}
        for slot, group in self.active.items():
            if group is not None and any(id(m) in owned for m in group.modules):
                self.active[slot] = None


def _unet_blocks(unet: nn.Module) -> list[nn.Module]:
    blocks = list(unet.down_blocks)
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks + list(unet.up_blocks)


def _hook_points(model) -> list[nn.Module]:
    points = [model.unet] + _unet_blocks(model.unet) + [e.model for e in model.prompt_encoder.encoders]
    for vae in (model.own_vae, model.vae):
        if vae is not None:
            points += [getattr(vae, n) for n in VAE_PARTS if isinstance(getattr(vae, n, None), nn.Module)]
    return points


def use_sdpa(module: nn.Module) -> int:
    """Set torch SDPA attention on every diffusers attention layer of `module`; returns how many were changed."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    changed = sum(not isinstance(p, AttnProcessor2_0) for p in processors.values())
    if changed:
        module.set_attn_processor(AttnProcessor2_0())
    return changed


def prepare(model, devices: DeviceConfig, offloader: Offloader) -> None:
    """Everything a model needs before it runs on this engine; idempotent, so it runs at every activation.

    Per call: precision (autocast) and VAE tiling, read from `devices` each time. At first preparation:
    SDPA attention, channels_last and torch.compile (per `devices`). Then the memory mode's hooks."""
    vaes = [v for v in {id(v): v for v in (model.own_vae, model.vae) if v is not None}.values()]
    precision.install_model(model.unet, vaes, devices)
    for vae in vaes:
        vae_tiling.install(vae, lambda: devices.vae_tiling)
        use_sdpa(vae)
    if not getattr(model.unet, "_studio_prepared", False):
        model.unet._studio_prepared = True
        use_sdpa(model.unet)
        if devices.channels_last:
            model.unet.to(memory_format=torch.channels_last)
        if devices.compile:
            precision.compile_module(model.unet)
    offloader.attach(model, devices.memory_mode)
