"""Which module of a loaded model a kohya/LyCORIS key names.

kohya names are module paths with '.' → '_' and a prefix:
- UNet `lora_unet_`: SD1/SD2 files use diffusers module names (`down_blocks_0_attentions_0_...`), SDXL
  files the original SGM names (`input_blocks_4_1_...`). Our UNets are diffusers modules, so both spellings
  are registered for every module; the SGM name comes from the checkpoint writer's key mapping.
- Text encoders (HF CLIP names, `text_model_encoder_layers_0_self_attn_q_proj`): `lora_te_` for the one
  tower of SD1/SD2, `lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG) for SDXL.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..checkpoint_writer import unet_to_ldm

log = logging.getLogger(__name__)
PATCHABLE = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Target:
    component: str      # "unet" or "te"
    name: str           # "unet.down_blocks.0..." / "te0.text_model.encoder..." (unique within the model)
    module: nn.Module


def kohya_name(prefix: str, module_path: str) -> str:
    return prefix + module_path.replace(".", "_")


def _ldm_names(unet: nn.Module) -> dict[str, str]:
    """diffusers module path → original (SGM/LDM) module path, for modules with a weight."""
    try:
        keys = list(unet.state_dict().keys())
        mapped = list(unet_to_ldm(unet, prefix="").keys())
    except KeyError as exc:   # an exotic UNet option the writer cannot map: diffusers names only
        log.warning("no original-layout names for this UNet (%s); only diffusers-named LoRA keys will match", exc)
        return {}
    if len(keys) != len(mapped):
        return {}
    return {k[:-len(".weight")]: m[:-len(".weight")] for k, m in zip(keys, mapped) if k.endswith(".weight")}


def _unet_targets(unet: nn.Module) -> dict[str, Target]:
    ldm = _ldm_names(unet)
    out: dict[str, Target] = {}
    for path, module in unet.named_modules():
        if not isinstance(module, PATCHABLE):
            continue
        target = Target("unet", f"unet.{path}", module)
        out[kohya_name("lora_unet_", path)] = target
        if path in ldm:
            out.setdefault(kohya_name("lora_unet_", ldm[path]), target)
    return out


def _te_prefixes(kinds: list[str]) -> list[list[str]]:
    if "open_clip_g" in kinds and "clip_l" in kinds:
        return [["lora_te1_"] if k == "clip_l" else ["lora_te2_"] for k in kinds]
    if kinds == ["open_clip_g"]:   # SDXL refiner: its one tower is SDXL's second
        return [["lora_te2_", "lora_te_"]]
    return [["lora_te_"] for _ in kinds]


def _te_targets(encoders: list) -> dict[str, Target]:
    out: dict[str, Target] = {}
    prefixes = _te_prefixes([e.kind for e in encoders])
    for i, (enc, tower_prefixes) in enumerate(zip(encoders, prefixes)):
        for path, module in enc.model.named_modules():
            if not isinstance(module, PATCHABLE):
                continue
            # transformers 5 flattened CLIPTextModel; kohya names keep the `text_model.` level.
            hf_path = path if path.startswith(("text_model.", "text_projection")) else f"text_model.{path}"
            target = Target("te", f"te{i}.{path}", module)
            for prefix in tower_prefixes:
                out[kohya_name(prefix, hf_path)] = target
    return out


def build_key_map(model) -> dict[str, Target]:
    """kohya module key → target module, for an SDModel."""
    return {**_unet_targets(model.unet), **_te_targets(model.prompt_encoder.encoders)}
