"""Build live UNet / VAE / text-encoder modules from an original-layout state dict.

The key conversion is diffusers' own (`diffusers.loaders.single_file_utils`); the configs come from shapes
(`architectures.py`). Modules are built on the meta device and the converted tensors are assigned in place,
so no random initialisation is paid and no second copy of the weights is made.
"""
from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import architectures as arch
from .detect import (REFINER_TE_PREFIX, SD1_TE_PREFIX, SD2_TE_PREFIX, SDXL_TE1_PREFIX, SDXL_TE2_PREFIX,
                     UNET_PREFIX, VAE_PREFIX, Family)

_LAYER_RX = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.")


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str) -> torch.nn.Module:
    """Load `state` into a meta-device module by assignment, casting to `dtype`; fail on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{what}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    _materialize_position_ids(module)
    return module.eval().requires_grad_(False)


def _materialize_position_ids(module: torch.nn.Module) -> None:
    """CLIP keeps `position_ids` as a non-persistent buffer, so it is still on meta after assignment."""
    for name, buf in list(module.named_buffers()):
        if buf.device.type != "meta":
            continue
        if not name.endswith("position_ids"):
            raise ValueError(f"buffer {name} was not loaded")
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def build_unet(sd: dict[str, torch.Tensor], family: Family, dtype: torch.dtype) -> UNet2DConditionModel:
    config = arch.unet_config(arch.strip_prefix(sd, UNET_PREFIX), family)
    converted = sfu.convert_ldm_unet_checkpoint(sd, config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return _assign(unet, converted, dtype, "UNet")


def build_vae(sd: dict[str, torch.Tensor], family: Family, dtype: torch.dtype, prefix: str = VAE_PREFIX) -> AutoencoderKL:
    """`prefix` is `first_stage_model.` inside a checkpoint and '' for a standalone VAE file."""
    vae_sd = arch.strip_prefix(sd, prefix) if prefix else sd
    config = arch.vae_config(vae_sd, family)
    converted = sfu.convert_ldm_vae_checkpoint(vae_sd, config)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    return _assign(vae, converted, dtype, "VAE")


def _fit_text_keys(converted: dict[str, torch.Tensor], module: torch.nn.Module, layers: int) -> dict[str, torch.Tensor]:
    """Match diffusers' `text_model.`-prefixed output to the module's own key style; drop unused layers."""
    wants_prefix = any(k.startswith("text_model.") for k in module.state_dict())
    wanted = set(module.state_dict())
    out = {}
    for key, value in converted.items():
        bare = key[len("text_model."):] if key.startswith("text_model.") else key
        m = _LAYER_RX.match(bare)
        if m and int(m.group(1)) >= layers:
            continue
        name = ("text_model." + bare) if wants_prefix and not bare.startswith("text_projection") else bare
        if name.endswith("position_ids") or (name not in wanted and name in ("logit_scale", "text_projection.weight")):
            continue
        out[name] = value
    return out


def build_clip_l(sd: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype) -> CLIPTextModel:
    te = arch.strip_prefix(sd, prefix + "text_model.")
    config = CLIPTextConfig(**arch.clip_l_config(te))
    converted = sfu.convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(prefix)}, prefix)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    return _assign(model, _fit_text_keys(converted, model, config.num_hidden_layers), dtype, "text encoder")


def build_open_clip(sd: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype, with_projection: bool,
                    drop_last_layer: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    """SD2 stores one more resblock than it conditions on (penultimate layer); that block is not built."""
    te = arch.strip_prefix(sd, prefix)
    stored = arch.open_clip_stored_layers(te)
    config = CLIPTextConfig(**arch.open_clip_config(te, stored - 1 if drop_last_layer else stored))
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    subset = {k: v for k, v in sd.items() if k.startswith(prefix)}
    converted = sfu.convert_open_clip_checkpoint(model, subset, prefix=prefix)
    return _assign(model, _fit_text_keys(converted, model, config.num_hidden_layers), dtype, "text encoder")


def build_text_encoders(sd: dict[str, torch.Tensor], family: Family, dtype: torch.dtype) -> list[tuple[str, torch.nn.Module]]:
    """[(kind, module)] in conditioning order; kind is 'clip_l', 'open_clip' or 'open_clip_g'."""
    if family.base == "sd1":
        return [("clip_l", build_clip_l(sd, SD1_TE_PREFIX, dtype))]
    if family.base == "sd2":
        return [("open_clip", build_open_clip(sd, SD2_TE_PREFIX, dtype, with_projection=False, drop_last_layer=True))]
    if family is Family.SDXL_REFINER:
        return [("open_clip_g", build_open_clip(sd, REFINER_TE_PREFIX, dtype, with_projection=True, drop_last_layer=False))]
    return [("clip_l", build_clip_l(sd, SDXL_TE1_PREFIX, dtype)),
            ("open_clip_g", build_open_clip(sd, SDXL_TE2_PREFIX, dtype, with_projection=True, drop_last_layer=False))]
