"""Write diffusers/transformers models as original single-file (CompVis/LDM/SGM) Stable Diffusion checkpoints.

The inverse of diffusers' `single_file_utils` converters. Every block and layer count is read from the
modules themselves, so full-size models and tiny test models take the same path. Works on meta tensors
(nothing is computed but concatenations and reshapes).

Layouts (formats.md §1): UNet `model.diffusion_model.*`, VAE `first_stage_model.*`, CLIP-L in HF layout
under `cond_stage_model.transformer.` / `conditioner.embedders.0.transformer.`, OpenCLIP under
`cond_stage_model.model.` (SD2), `conditioner.embedders.1.model.` (SDXL) or `conditioner.embedders.0.model.`
(SDXL refiner).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from webui.atomic_files import atomic_output

from webui.engine.detect import (REFINER_TE_PREFIX, SD1_TE_PREFIX, SD2_TE_PREFIX, SDXL_TE1_PREFIX,  # noqa: F401
                                 SDXL_TE2_PREFIX, UNET_PREFIX, VAE_PREFIX)

ARCHS = ("sd1", "sd2", "sdxl", "sdxl-refiner")

# Trained OpenCLIP towers end at logit_scale = ln(100) (the clamp value).
OPEN_CLIP_LOGIT_SCALE = math.log(100.0)

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


class UnmappedKeyError(KeyError):
    """A module parameter that has no place in the original layout (an unsupported model option)."""


# ---------------------------------------------------------------------------------------------- helpers

class _PrefixMap:
    """Maps diffusers module paths to original-layout paths, with optional renames of the first sub-module."""

    def __init__(self) -> None:
        self._rules: dict[str, tuple[str, Mapping[str, str]]] = {}

    def add(self, src: str, dst: str, renames: Mapping[str, str] | None = None) -> None:
        self._rules[src + "."] = (dst + ".", renames or {})

    def map(self, key: str) -> str:
        # The longest matching module path wins: "down_blocks.1.resnets.1." before "down_blocks.1.".
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            src = ".".join(parts[:n]) + "."
            if src in self._rules:
                dst, renames = self._rules[src]
                return dst + _rename(key[len(src):], renames)
        raise UnmappedKeyError(key)


def _rename(rest: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _map_state_dict(module: nn.Module, mapper: _PrefixMap, prefix: str) -> dict[str, Tensor]:
    return {prefix + mapper.map(k): v for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------- UNet

def _unet_key_map(unet: nn.Module) -> _PrefixMap:
    m = _PrefixMap()
    m.add("conv_in", "input_blocks.0.0")
    m.add("time_embedding.linear_1", "time_embed.0")
    m.add("time_embedding.linear_2", "time_embed.2")
    m.add("add_embedding.linear_1", "label_emb.0.0")
    m.add("add_embedding.linear_2", "label_emb.0.2")
    m.add("class_embedding.linear_1", "label_emb.0.0")
    m.add("class_embedding.linear_2", "label_emb.0.2")
    m.add("conv_norm_out", "out.0")
    m.add("conv_out", "out.2")
    _map_down_blocks(unet, m)
    _map_mid_block(unet, m)
    _map_up_blocks(unet, m)
    return m


def _map_down_blocks(unet: nn.Module, m: _PrefixMap) -> None:
    idx = 1
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            m.add(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", _UNET_RESNET)
            if attentions is not None:
                m.add(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1")
            idx += 1
        if block.downsamplers is not None:
            m.add(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{idx}.0.op")
            idx += 1


def _map_mid_block(unet: nn.Module, m: _PrefixMap) -> None:
    mid = unet.mid_block
    if mid is None:
        return
    attentions = getattr(mid, "attentions", None) or []
    idx = 0
    for j in range(len(mid.resnets)):
        m.add(f"mid_block.resnets.{j}", f"middle_block.{idx}", _UNET_RESNET)
        idx += 1
        if j < len(attentions):
            m.add(f"mid_block.attentions.{j}", f"middle_block.{idx}")
            idx += 1


def _map_up_blocks(unet: nn.Module, m: _PrefixMap) -> None:
    idx = 0
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        n = len(block.resnets)
        for j in range(n):
            m.add(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", _UNET_RESNET)
            if attentions is not None:
                m.add(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1")
            if j == n - 1 and block.upsamplers is not None:
                slot = 2 if attentions is not None else 1
                m.add(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{idx}.{slot}.conv")
            idx += 1


def unet_to_ldm(unet: nn.Module, prefix: str = UNET_PREFIX) -> dict[str, Tensor]:
    """A `UNet2DConditionModel` as original-layout tensors (`model.diffusion_model.input_blocks...`).

    Transformer blocks keep their names (LDM's SpatialTransformer uses the same ones); proj_in/proj_out keep
    the module's own shape (1x1 conv for SD1, linear for SD2/SDXL), as the real files do.
    """
    return _map_state_dict(unet, _unet_key_map(unet), prefix)


# -------------------------------------------------------------------------------------------------- VAE

def _vae_key_map(vae: nn.Module) -> _PrefixMap:
    m = _PrefixMap()
    for part in ("encoder", "decoder"):
        m.add(f"{part}.conv_in", f"{part}.conv_in")
        m.add(f"{part}.conv_out", f"{part}.conv_out")
        m.add(f"{part}.conv_norm_out", f"{part}.norm_out")
        coder = getattr(vae, part)
        for j in range(len(coder.mid_block.resnets)):
            m.add(f"{part}.mid_block.resnets.{j}", f"{part}.mid.block_{j + 1}", _VAE_RESNET)
        for j in range(len(coder.mid_block.attentions)):
            m.add(f"{part}.mid_block.attentions.{j}", f"{part}.mid.attn_{j + 1}", _VAE_ATTENTION)
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            m.add(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        m.add(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    n = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        # LDM numbers decoder levels from the full-resolution end; diffusers from the latent side.
        for j in range(len(block.resnets)):
            m.add(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", _VAE_RESNET)
        m.add(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    m.add("quant_conv", "quant_conv")
    m.add("post_quant_conv", "post_quant_conv")
    return m


def vae_to_ldm(vae: nn.Module, prefix: str = VAE_PREFIX) -> dict[str, Tensor]:
    """An `AutoencoderKL` as original-layout tensors. Pass prefix="" for a standalone A1111 VAE file.

    Mid-block attention q/k/v/proj_out are stored as 1x1 conv weights (out, in, 1, 1) like the real files.
    """
    mapped = _map_state_dict(vae, _vae_key_map(vae), "")
    return {prefix + key: _as_conv1x1(key, value) for key, value in mapped.items()}


def _as_conv1x1(key: str, value: Tensor) -> Tensor:
    is_attn_weight = ".attn_" in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
    return value.reshape(*value.shape, 1, 1) if is_attn_weight and value.ndim == 2 else value


# -------------------------------------------------------------------------------------------- CLIP text

def _text_tower(model: nn.Module) -> nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still wraps `text_model`.
    return getattr(model, "text_model", model)


def clip_l_to_ldm(text_model: nn.Module, prefix: str = SD1_TE_PREFIX) -> dict[str, Tensor]:
    """A CLIPTextModel in HF layout under `prefix + "text_model."` (SD1 and SDXL's first encoder)."""
    out = {f"{prefix}text_model.{k}": v for k, v in _text_tower(text_model).state_dict().items()}
    projection = getattr(text_model, "text_projection", None)
    if projection is not None:
        out[prefix + "text_projection.weight"] = projection.weight
    return out


def clip_position_ids(prefix: str, positions: int = 77, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The `embeddings.position_ids` buffer older transformers saved (int64, shape (1, positions))."""
    return {f"{prefix}text_model.embeddings.position_ids": torch.arange(positions, device=device).unsqueeze(0)}


def open_clip_to_ldm(text_model: nn.Module, prefix: str = SD2_TE_PREFIX, extra_unused_layers: int = 0,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A CLIPTextModel(WithProjection) as an OpenCLIP text tower (fused qkv `in_proj`, `ln_1/ln_2`, `c_fc/c_proj`).

    `text_projection` is stored as (width, proj) = HF Linear weight transposed; a model without a projection
    gets a random (width, width) one, as SD2 files carry it unused. `extra_unused_layers` appends random
    resblocks after the used ones: SD2 files store one more block than penultimate-layer conditioning reads.
    """
    tower = _text_tower(text_model)
    sd = tower.state_dict()
    ref = sd["embeddings.token_embedding.weight"]
    out = {
        prefix + "token_embedding.weight": ref,
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    layers = len(tower.encoder.layers)
    for n in range(layers):
        out.update(_open_clip_resblock(sd, f"encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."))
    width, mlp_width = ref.shape[1], sd["encoder.layers.0.mlp.fc1.weight"].shape[0]
    for n in range(layers, layers + extra_unused_layers):
        out.update(_random_resblock(f"{prefix}transformer.resblocks.{n}.", width, mlp_width, ref, generator))
    projection = getattr(text_model, "text_projection", None)
    if projection is not None:
        out[prefix + "text_projection"] = projection.weight.T
    else:
        out[prefix + "text_projection"] = _randn((width, width), ref, generator, std=width ** -0.5)
    out[prefix + "logit_scale"] = torch.tensor(OPEN_CLIP_LOGIT_SCALE, dtype=ref.dtype, device=ref.device)
    return out


def _open_clip_resblock(sd: Mapping[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {}
    for kind in ("weight", "bias"):
        qkv = [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
        out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
    for key, value in sd.items():
        if not key.startswith(src) or ".q_proj." in key or ".k_proj." in key or ".v_proj." in key:
            continue
        rest = key[len(src):]
        module, _, param = rest.rpartition(".")
        if module not in _OPEN_CLIP_LAYER:
            raise UnmappedKeyError(key)
        out[f"{dst}{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    return out


def _random_resblock(dst: str, width: int, mlp_width: int, like: Tensor,
                     generator: torch.Generator | None) -> dict[str, Tensor]:
    ones = torch.ones(width, dtype=like.dtype, device=like.device)
    zeros = torch.zeros(width, dtype=like.dtype, device=like.device)
    return {
        dst + "attn.in_proj_weight": _randn((3 * width, width), like, generator),
        dst + "attn.in_proj_bias": torch.zeros(3 * width, dtype=like.dtype, device=like.device),
        dst + "attn.out_proj.weight": _randn((width, width), like, generator),
        dst + "attn.out_proj.bias": zeros,
        dst + "ln_1.weight": ones, dst + "ln_1.bias": zeros.clone(),
        dst + "ln_2.weight": ones.clone(), dst + "ln_2.bias": zeros.clone(),
        dst + "mlp.c_fc.weight": _randn((mlp_width, width), like, generator),
        dst + "mlp.c_fc.bias": torch.zeros(mlp_width, dtype=like.dtype, device=like.device),
        dst + "mlp.c_proj.weight": _randn((width, mlp_width), like, generator),
        dst + "mlp.c_proj.bias": zeros.clone(),
    }


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None, std: float = 0.02) -> Tensor:
    if like.device.type == "meta":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    gen_device = generator.device if generator is not None else "cpu"
    values = torch.randn(shape, generator=generator, device=gen_device) * std
    return values.to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------------------------- whole checkpoints

def sd_to_ldm(arch: str, unet: nn.Module, vae: nn.Module | None = None, text_encoder: nn.Module | None = None,
              text_encoder_2: nn.Module | None = None, open_clip_extra_layers: int = 1,
              generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Assemble a full single-file state dict for `arch` in ARCHS from pipeline components.

    sd1: text_encoder = CLIP-L. sd2: text_encoder = OpenCLIP (stored with `open_clip_extra_layers` more
    resblocks). sdxl: text_encoder = CLIP-L, text_encoder_2 = bigG with projection. sdxl-refiner:
    text_encoder_2 only.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    out = unet_to_ldm(unet)
    if vae is not None:
        out.update(vae_to_ldm(vae))
    if arch == "sd1":
        out.update(clip_l_to_ldm(_required(text_encoder, "text_encoder"), SD1_TE_PREFIX))
    elif arch == "sd2":
        out.update(open_clip_to_ldm(_required(text_encoder, "text_encoder"), SD2_TE_PREFIX,
                                    open_clip_extra_layers, generator))
    elif arch == "sdxl":
        out.update(clip_l_to_ldm(_required(text_encoder, "text_encoder"), SDXL_TE1_PREFIX))
        out.update(open_clip_to_ldm(_required(text_encoder_2, "text_encoder_2"), SDXL_TE2_PREFIX))
    else:
        out.update(open_clip_to_ldm(_required(text_encoder_2, "text_encoder_2"), REFINER_TE_PREFIX))
    return out


def _required(module: nn.Module | None, name: str) -> nn.Module:
    if module is None:
        raise ValueError(f"{name} is required for this architecture")
    return module


def ldm_schedule_buffers(num_timesteps: int = 1000, beta_start: float = 0.00085,
                         beta_end: float = 0.012) -> dict[str, Tensor]:
    """The 12 DDPM buffers LDM checkpoints (SD1/SD2) carry, for the scaled_linear schedule, float32."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    buffers = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: v.to(torch.float32) for k, v in buffers.items()}


def ema_counters(decay: float = 0.9999, num_updates: int = 0) -> dict[str, Tensor]:
    """`model_ema.decay` / `model_ema.num_updates`, which pruned LDM checkpoints still carry."""
    return {"model_ema.decay": torch.tensor(decay, dtype=torch.float32),
            "model_ema.num_updates": torch.tensor(num_updates, dtype=torch.int32)}


# --------------------------------------------------------------------------------------------- saving

def save_single_file(path: str | os.PathLike[str], state_dict: Mapping[str, Tensor], dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write `state_dict` as .safetensors atomically (temp file + rename).

    `dtype` casts floating-point tensors only (integer buffers such as position_ids keep their type).
    """
    path = Path(path)
    tensors = _prepare_for_save(state_dict, dtype)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)
    return path


def _prepare_for_save(state_dict: Mapping[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    # safetensors refuses tensors that share storage (tied weights, views), so copy those.
    out, seen = {}, set()
    for key, value in state_dict.items():
        t = value.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out
