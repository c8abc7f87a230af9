"""Full-size random-weight checkpoints in the real SD1.5 and SDXL single-file layouts, for benchmarks.

    python bench/fullsize.py [sd15|sdxl|sd15-vae ...]     # writes them if missing, prints their paths

The modules are built on the meta device with the real configurations (SD1.5: 860 M-parameter UNet,
CLIP-L, the 84 M VAE; SDXL: 2.6 B UNet, CLIP-L + OpenCLIP bigG, VAE), the key layout comes from the
project's writer (`checkpoint_writer.sd_to_ldm`), and every tensor is then drawn at random and streamed to
disk one at a time, in fp16 like most published checkpoints. Nothing but the largest single tensor is ever
in memory, so writing the 7 GB SDXL file needs well under 1 GB of RAM.

Weights are scaled so activations stay O(1) through the network (fan-in scaling, norm weights near 1):
the bf16-vs-fp32 comparison on this model then measures rounding, not overflow.
Files live in $SD_BENCH_CACHE (default ~/.cache/sd-studio-bench) and are never committed.
"""
from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (repo on sys.path, offline env)

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from webui.engine import checkpoint_writer as cw  # noqa: E402

from common import CACHE_DIR as CACHE  # noqa: E402
_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64",
              torch.int32: "I32"}

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                 layers_per_block=2, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, norm_num_groups=32,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)


def vae_config(scaling_factor: float) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=scaling_factor)


def clip_config(hidden: int, layers: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=hidden // 64, max_position_embeddings=77, hidden_act=act,
                          projection_dim=hidden, layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=1)


def meta_layout(kind: str) -> dict[str, torch.Tensor]:
    """The checkpoint's keys with meta tensors of the right shapes (and the real non-weight extras)."""
    with torch.device("meta"):
        if kind == "sd15-vae":
            return cw.vae_to_ldm(AutoencoderKL(**vae_config(0.18215)), prefix="")
        if kind == "sd15":
            unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**vae_config(0.18215))
            sd = cw.sd_to_ldm("sd1", unet, vae, CLIPTextModel(clip_config(768, 12, "quick_gelu")))
        elif kind == "sdxl":
            unet, vae = UNet2DConditionModel(**SDXL_UNET), AutoencoderKL(**vae_config(0.13025))
            sd = cw.sd_to_ldm("sdxl", unet, vae, CLIPTextModel(clip_config(768, 12, "quick_gelu")),
                              CLIPTextModelWithProjection(clip_config(1280, 32, "gelu")))
        else:
            raise ValueError(f"unknown kind {kind!r}")
    if kind == "sd15":
        sd.update(cw.ldm_schedule_buffers())
        sd.update(cw.ema_counters())
        sd.update(cw.clip_position_ids(cw.SD1_TE_PREFIX))
    else:
        sd.update(cw.clip_position_ids(cw.SDXL_TE1_PREFIX))
    return sd


def _random_like(key: str, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if like.device.type != "meta":
        return like                     # real buffers (schedule, position ids, EMA counters)
    shape = tuple(like.shape)
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(100.0))
    if len(shape) <= 1:
        base = 1.0 if key.endswith("weight") else 0.0    # 1-D weights are norm scales
        return base + 0.02 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))


def write_streaming(path: Path, layout: dict[str, torch.Tensor], dtype: torch.dtype, seed: int = 0) -> Path:
    """A .safetensors file written tensor by tensor (header first: offsets follow from shapes and dtypes)."""
    g = torch.Generator().manual_seed(seed)
    keys = sorted(layout)
    header, offset, dtypes = {}, 0, {}
    for key in keys:
        t = layout[key]
        dt = dtype if t.is_floating_point() else t.dtype
        dtypes[key] = dt
        size = math.prod(t.shape) * torch.empty((), dtype=dt).element_size()
        header[key] = {"dtype": _ST_DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "bench": "random full-size weights"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in keys:
            t = _random_like(key, layout[key], g).to(dtypes[key]).contiguous()
            f.write(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    tmp.replace(path)
    return path


def checkpoint(kind: str, dtype: torch.dtype = torch.float16) -> Path:
    """The cached file for `kind` ('sd15', 'sdxl', 'sd15-vae'), written on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"bench-{kind}-{str(dtype).rsplit('.', 1)[-1]}.safetensors"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr, flush=True)
        write_streaming(path, meta_layout(kind), dtype)
    return path


def params_in(path: Path) -> dict[str, int]:
    """Parameter counts per component prefix, from the header."""
    from webui.engine.safe_load import read_safetensors_header
    counts: dict[str, int] = {}
    for key, info in read_safetensors_header(path).items():
        if key == "__metadata__":
            continue
        part = key.split(".")[0] if "." in key else key
        counts[part] = counts.get(part, 0) + math.prod(info["shape"])
    return counts


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:] or ["sd15", "sd15-vae"]:
        p = checkpoint(name)
        print(p, f"{p.stat().st_size / 1e9:.2f} GB", params_in(p))
