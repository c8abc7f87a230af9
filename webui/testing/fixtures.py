"""Tiny random-weight Stable Diffusion checkpoints in the real single-file layouts, one per family.

The models are diffusers/transformers modules with small configs that keep every family convention real
checkpoints follow (formats.md, end): SD1 UNets with 8 heads, SD2/SDXL UNets and all text encoders with
64-dim heads, GroupNorm with 32 groups, SDXL's two text encoders of different widths and its
`label_emb` of pooled width + 6·256 (refiner: + 5·256), a 4-channel VAE that downsamples by 8, and the
real CLIP vocabulary (49408 tokens) so the shipped tokenizer fits. Text encoders are 64 (CLIP-L, OpenCLIP-H
stand-ins) and 128 (bigG stand-in) wide, so the token embeddings dominate the file sizes.

Every constant-initialised parameter (norm weights, zero biases) is jittered after the library's own init,
so no two same-shaped tensors are equal: a layout mix-up cannot hide behind identical values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.engine import checkpoint_writer as cw

FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sd2-depth", "sdxl", "sdxl-refiner", "sdxl-inpaint")

CLIP_VOCAB = 49408
CLIP_POSITIONS = 77
SDXL_TIME_EMBED_DIM = 256
# SD2 files store one OpenCLIP resblock more than penultimate-layer conditioning uses.
SD2_EXTRA_TEXT_LAYERS = 1
# Shifts the sd2-v UNet's output so A1111's v-prediction probe ((unet(0.5, t=999) - 0.5).mean() < -1)
# tells it from the epsilon sd2 fixture, whose keys and shapes are identical.
V_PREDICTION_OUT_BIAS = -2.0
_JITTER_STD = 0.02


@dataclass(frozen=True)
class FamilySpec:
    name: str
    arch: str  # "sd1", "sd2", "sdxl", "sdxl-refiner": the layout written (see checkpoint_writer.ARCHS)
    in_channels: int
    prediction_type: str
    vae_scaling_factor: float


SPECS = {
    "sd1": FamilySpec("sd1", "sd1", 4, "epsilon", 0.18215),
    "sd1-inpaint": FamilySpec("sd1-inpaint", "sd1", 9, "epsilon", 0.18215),
    "sd2": FamilySpec("sd2", "sd2", 4, "epsilon", 0.18215),
    "sd2-v": FamilySpec("sd2-v", "sd2", 4, "v_prediction", 0.18215),
    "sd2-inpaint": FamilySpec("sd2-inpaint", "sd2", 9, "epsilon", 0.18215),
    "sd2-depth": FamilySpec("sd2-depth", "sd2", 5, "epsilon", 0.18215),
    "sdxl": FamilySpec("sdxl", "sdxl", 4, "epsilon", 0.13025),
    "sdxl-refiner": FamilySpec("sdxl-refiner", "sdxl-refiner", 4, "epsilon", 0.13025),
    "sdxl-inpaint": FamilySpec("sdxl-inpaint", "sdxl", 9, "epsilon", 0.13025),
}


def spec(family: str) -> FamilySpec:
    if family not in SPECS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return SPECS[family]


# ------------------------------------------------------------------------------------------- configs

def _clip_config(hidden: int, act: str, layers: int = 3) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, max_position_embeddings=CLIP_POSITIONS, hidden_act=act,
        projection_dim=hidden, layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def clip_l_config() -> CLIPTextConfig:
    return _clip_config(64, "quick_gelu")


def open_clip_h_config() -> CLIPTextConfig:
    """The SD2 text encoder as diffusers sees it (the file stores SD2_EXTRA_TEXT_LAYERS more)."""
    return _clip_config(64, "gelu")


def open_clip_big_g_config() -> CLIPTextConfig:
    return _clip_config(128, "gelu")


def unet_config(family: str) -> dict:
    """UNet2DConditionModel kwargs. SD2/SDXL levels are all 64 wide (one 64-dim head): wider levels would
    multiply the UNet size; SD1 (32, 64) keeps a channel change on the down path."""
    s = spec(family)
    if s.arch == "sd1":
        cfg = _unet_common((32, 64), ("CrossAttnDownBlock2D", "DownBlock2D"), heads=8, context=64)
    elif s.arch == "sd2":
        cfg = _unet_common((64, 64), ("CrossAttnDownBlock2D", "DownBlock2D"), heads=(1, 1), context=64)
        cfg.update(use_linear_projection=True, upcast_attention=True)
    elif s.arch == "sdxl":
        cfg = _unet_common((64, 64), ("DownBlock2D", "CrossAttnDownBlock2D"), heads=(1, 1), context=64 + 128)
        cfg.update(_sdxl_extras(pooled=128, time_ids=6), transformer_layers_per_block=(1, 2))
    else:
        cfg = _unet_common((64, 64, 64), ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                           heads=(1, 1, 1), context=128)
        # The refiner conditions on 5 time ids (size, crop, aesthetic score) instead of 6.
        cfg.update(_sdxl_extras(pooled=128, time_ids=5), transformer_layers_per_block=(1, 2, 2))
    cfg["in_channels"] = s.in_channels
    return cfg


def _unet_common(channels: tuple[int, ...], down: tuple[str, ...], heads, context: int) -> dict:
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    return {
        "sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": channels,
        "down_block_types": down, "up_block_types": up, "layers_per_block": 2, "attention_head_dim": heads,
        "cross_attention_dim": context, "norm_num_groups": 32, "norm_eps": 1e-5,
    }


def _sdxl_extras(pooled: int, time_ids: int) -> dict:
    return {
        "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": pooled + time_ids * SDXL_TIME_EMBED_DIM,
    }


def vae_config(scaling_factor: float = 0.18215) -> dict:
    # Four levels, like the real VAE: an 8x downsampling factor.
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 64, "scaling_factor": scaling_factor,
    }


# ---------------------------------------------------------------------------------------- components

def build_components(family: str, seed: int = 0) -> dict[str, nn.Module]:
    """Fresh random modules for `family`, named like diffusers pipeline components.

    sd1/sd2 families: unet, vae, text_encoder. sdxl/sdxl-inpaint: + text_encoder_2 (with projection).
    sdxl-refiner: unet, vae, text_encoder_2. Deterministic for a given seed; the global RNG is untouched.
    """
    s = spec(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components: dict[str, nn.Module] = {
            "unet": UNet2DConditionModel(**unet_config(family)),
            "vae": AutoencoderKL(**vae_config(s.vae_scaling_factor)),
        }
        if s.arch == "sd1" or s.arch == "sdxl":
            components["text_encoder"] = CLIPTextModel(clip_l_config())
        if s.arch == "sd2":
            components["text_encoder"] = CLIPTextModel(open_clip_h_config())
        if s.arch.startswith("sdxl"):
            components["text_encoder_2"] = CLIPTextModelWithProjection(open_clip_big_g_config())
        for module in components.values():
            _jitter(module)
            module.eval()
    if s.prediction_type == "v_prediction":
        with torch.no_grad():
            components["unet"].conv_out.bias.add_(V_PREDICTION_OUT_BIAS)
    return components


@torch.no_grad()
def _jitter(module: nn.Module) -> None:
    # Only constant-initialised tensors (norm weights, zero biases); random ones already differ.
    for p in module.parameters():
        flat = p.view(-1)
        if flat[0] == flat[-1] and bool((flat == flat[0]).all()):
            p.add_(torch.randn_like(p) * _JITTER_STD)


def checkpoint_state_dict(family: str, components: dict[str, nn.Module], real_file_extras: bool = True,
                          seed: int = 0) -> dict[str, torch.Tensor]:
    """The single-file state dict for `components` of `family` (what write_checkpoint saves)."""
    s = spec(family)
    generator = torch.Generator().manual_seed(seed + 1)
    sd = cw.sd_to_ldm(s.arch, components["unet"], components["vae"], components.get("text_encoder"),
                      components.get("text_encoder_2"), open_clip_extra_layers=SD2_EXTRA_TEXT_LAYERS,
                      generator=generator)
    if real_file_extras:
        sd.update(_real_file_extras(s.arch))
    return sd


def _real_file_extras(arch: str) -> dict[str, torch.Tensor]:
    # LDM files (SD1/SD2) carry DDPM buffers and EMA counters; SGM files (SDXL) do not.
    extras: dict[str, torch.Tensor] = {}
    if arch in ("sd1", "sd2"):
        extras.update(cw.ldm_schedule_buffers())
        extras.update(cw.ema_counters())
    if arch == "sd1":
        extras.update(cw.clip_position_ids(cw.SD1_TE_PREFIX, CLIP_POSITIONS))
    if arch == "sdxl":
        extras.update(cw.clip_position_ids(cw.SDXL_TE1_PREFIX, CLIP_POSITIONS))
    return extras


def write_checkpoint(path: str | os.PathLike[str], family: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                     real_file_extras: bool = True) -> Path:
    """Write a tiny `family` checkpoint (.safetensors) to `path` and return the path."""
    sd = checkpoint_state_dict(family, build_components(family, seed), real_file_extras, seed)
    return cw.save_single_file(path, sd, dtype=dtype)


def write_vae(path: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.float32,
              scaling_factor: float = 0.18215) -> Path:
    """A standalone VAE file as A1111 VAE files are laid out: `encoder.*`, `decoder.*`, `quant_conv.*`..."""
    return cw.save_single_file(path, cw.vae_to_ldm(build_vae(seed, scaling_factor), prefix=""), dtype=dtype)


def build_vae(seed: int = 0, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """The module write_vae(path, seed) writes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config(scaling_factor))
        _jitter(vae)
    return vae.eval()
