"""diffusers/transformers configs built from tensor shapes, plus the per-family conventions shapes cannot tell.

Every dimension (channels, levels, layers, context width) is read from the state dict, so a full-size
checkpoint and a tiny test model go through the same code. The family fixes the rest (formats.md, end):
SD1 UNets use 8 attention heads; SD2/SDXL UNets and all CLIP text encoders use 64-dim heads.
"""
from __future__ import annotations

import re

import torch

from .detect import Family

HEAD_DIM = 64
SD1_UNET_HEADS = 8
SDXL_TIME_EMBED_DIM = 256
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _indices(sd: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _transformer_depth(sd: dict, block: str) -> int:
    return len(_indices(sd, re.escape(block) + r"\.transformer_blocks\.(\d+)\."))


def _unet_levels(unet: dict) -> list[dict]:
    """Walk input_blocks: each level is its resnets (channel count, attention depth) up to a downsampler."""
    levels, current = [], []
    for i in _indices(unet, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet or f"input_blocks.{i}.0.op.bias" in unet:
            levels.append(current)
            current = []
            continue
        channels = int(unet[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        current.append({"channels": channels, "depth": _transformer_depth(unet, f"input_blocks.{i}.1")})
    levels.append(current)
    return levels


def unet_config(unet: dict[str, torch.Tensor], family: Family) -> dict:
    """A UNet2DConditionModel config from an original-layout UNet state dict (prefix stripped)."""
    levels = _unet_levels(unet)
    channels = [lvl[0]["channels"] for lvl in levels]
    layers = {len(lvl) for lvl in levels}
    if len(layers) != 1:
        raise ValueError(f"UNet levels have different resnet counts {sorted(layers)}; not a Stable Diffusion UNet")
    depths = [lvl[0]["depth"] for lvl in levels]
    attn = [d > 0 for d in depths]
    mid_depth = _transformer_depth(unet, "middle_block.1")
    down_depths = [d if d > 0 else 1 for d in depths]
    if not attn[-1] and mid_depth:
        down_depths[-1] = mid_depth
    to_k = next(v for k, v in unet.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in unet.items() if k.endswith(".proj_in.weight"))
    config = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[family.base],
        "in_channels": int(unet["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(unet["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else None,
        "block_out_channels": channels,
        "layers_per_block": layers.pop(),
        "transformer_layers_per_block": down_depths,
        "cross_attention_dim": int(to_k.shape[1]),
        "use_linear_projection": proj_in.ndim == 2,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "attention_head_dim": _unet_heads(channels, family),
        "upcast_attention": family.base == "sd2",
    }
    time_dim = int(unet["time_embed.0.weight"].shape[0])
    if time_dim != channels[0] * 4:
        config["time_embedding_dim"] = time_dim
    if "label_emb.0.0.weight" in unet:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                      projection_class_embeddings_input_dim=int(unet["label_emb.0.0.weight"].shape[1]))
    return config


def _unet_heads(channels: list[int], family: Family) -> int | list[int]:
    # diffusers' `attention_head_dim` is really the number of heads for these UNets.
    if family.base == "sd1":
        return SD1_UNET_HEADS
    return [max(1, c // HEAD_DIM) for c in channels]


def vae_config(vae: dict[str, torch.Tensor], family: Family) -> dict:
    """An AutoencoderKL config from an original-layout VAE state dict (prefix stripped)."""
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    channels = [int(vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    layers = len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": int(vae["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(vae["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(vae["encoder.conv_out.weight"].shape[0]) // 2,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": VAE_SCALING[family.base],
    }


def clip_l_config(te: dict[str, torch.Tensor]) -> dict:
    """CLIPTextConfig kwargs for an HF-layout CLIP text model (prefix up to `text_model.` stripped)."""
    tok = te["embeddings.token_embedding.weight"]
    hidden = int(tok.shape[1])
    return _clip_config(
        vocab=int(tok.shape[0]), hidden=hidden,
        positions=int(te["embeddings.position_embedding.weight"].shape[0]),
        layers=len(_indices(te, r"encoder\.layers\.(\d+)\.")),
        intermediate=int(te["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        act="quick_gelu", projection=hidden,
    )


def open_clip_config(te: dict[str, torch.Tensor], used_layers: int | None = None) -> dict:
    """CLIPTextConfig kwargs for an OpenCLIP text tower (prefix up to `model.` stripped)."""
    tok = te["token_embedding.weight"]
    hidden = int(tok.shape[1])
    stored = len(_indices(te, r"transformer\.resblocks\.(\d+)\."))
    proj = te.get("text_projection")
    return _clip_config(
        vocab=int(tok.shape[0]), hidden=hidden, positions=int(te["positional_embedding"].shape[0]),
        layers=used_layers if used_layers is not None else stored,
        intermediate=int(te["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        act="gelu", projection=int(proj.shape[1]) if proj is not None else hidden,
    )


def open_clip_stored_layers(te: dict[str, torch.Tensor]) -> int:
    return len(_indices(te, r"transformer\.resblocks\.(\d+)\."))


def _clip_config(vocab: int, hidden: int, positions: int, layers: int, intermediate: int, act: str,
                 projection: int) -> dict:
    return {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // HEAD_DIM),
        "max_position_embeddings": positions, "hidden_act": act, "layer_norm_eps": 1e-5,
        "projection_dim": projection, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
    }
