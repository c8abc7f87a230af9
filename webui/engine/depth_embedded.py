"""The MiDaS depth estimator embedded in SD2-depth single files (`depth_model.*`), as a transformers DPT.

512-depth-ema carries MiDaS v3 "DPT-Hybrid" (timm's vit_base_resnet50_384 + the DPT neck and head) under
`depth_model.model.`. transformers' `DPTForDepthEstimation` with `is_hybrid=True` is the same network, so the
weights are renamed onto it (the renames follow transformers' own DPT-Hybrid conversion) and its config is read
from the tensor shapes. The fused timm `attn.qkv` is split into query/key/value.

Checked by a round trip on a small random hybrid DPT (tests/test_depth.py); not yet against a real
512-depth-ema file, which this machine does not have.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import torch

from .depth import DepthEstimator
from .errors import EngineError
from .safe_load import load_state_dict

log = logging.getLogger(__name__)
PREFIX = "depth_model.model."
HEAD_DIM = 64                     # ViT-B: 12 heads of 64
MIDAS_MEAN, MIDAS_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)   # A1111's AddMiDaS: pixels in [-1, 1]


def _fusion(m: re.Match) -> str:
    return f"neck.fusion_stage.layers.{4 - int(m[1])}."


_BLOCK = r"pretrained\.model\.blocks\.(\d+)\."
_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.(\w+)",
     lambda m: f"dpt.embeddings.backbone.bit.embedder.convolution.{m[1]}"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.(\w+)",
     lambda m: f"dpt.embeddings.backbone.bit.embedder.norm.{m[1]}"),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)",
     lambda m: f"dpt.embeddings.backbone.bit.encoder.stages.{m[1]}.layers.{m[2]}.{m[3]}"),
    (r"pretrained\.model\.patch_embed\.proj\.(\w+)", lambda m: f"dpt.embeddings.projection.{m[1]}"),
    (r"pretrained\.model\.cls_token", lambda m: "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", lambda m: "dpt.embeddings.position_embeddings"),
    (_BLOCK + r"norm1\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.layernorm_before.{m[2]}"),
    (_BLOCK + r"norm2\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.layernorm_after.{m[2]}"),
    (_BLOCK + r"attn\.proj\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.attention.output.dense.{m[2]}"),
    (_BLOCK + r"mlp\.fc1\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.intermediate.dense.{m[2]}"),
    (_BLOCK + r"mlp\.fc2\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.output.dense.{m[2]}"),
    (r"pretrained\.model\.norm\.(\w+)", lambda m: f"dpt.layernorm.{m[1]}"),
    (r"pretrained\.act_postprocess(\d)\.0\.project\.0\.(\w+)",
     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0.{m[2]}"),
    (r"pretrained\.act_postprocess(\d)\.3\.(\w+)",
     lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection.{m[2]}"),
    (r"pretrained\.act_postprocess(\d)\.4\.(\w+)",
     lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize.{m[2]}"),
    (r"scratch\.layer(\d)_rn\.(\w+)", lambda m: f"neck.convs.{int(m[1]) - 1}.{m[2]}"),
    (r"scratch\.refinenet(\d)\.out_conv\.(\w+)", lambda m: _fusion(m) + f"projection.{m[2]}"),
    (r"scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(\w+)",
     lambda m: _fusion(m) + f"residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
    (r"scratch\.output_conv\.(\d)\.(\w+)", lambda m: f"head.head.{m[1]}.{m[2]}"),
]
_COMPILED = [(re.compile(pattern + "$"), fn) for pattern, fn in _RULES]
_QKV = re.compile(_BLOCK + r"attn\.qkv\.(\w+)$")
_DROPPED = re.compile(r"pretrained\.model\.head\.")   # ViT classifier, unused by MiDaS


def rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiDaS keys (without the `depth_model.model.` prefix) → transformers DPT keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        qkv = _QKV.match(key)
        if qkv:
            base = f"dpt.encoder.layer.{qkv[1]}.attention.attention."
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{base}{name}.{qkv[2]}"] = part.clone()
            continue
        if _DROPPED.match(key):
            continue
        for pattern, fn in _COMPILED:
            m = pattern.match(key)
            if m:
                out[fn(m)] = value
                break
        else:
            raise EngineError(f"unexpected MiDaS weight {PREFIX}{key}")
    return out


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd for m in [rx.match(k)] if m})


def config_from_weights(sd: dict[str, torch.Tensor]):
    """A DPT-Hybrid config whose tensor shapes match the MiDaS weights `sd` (un-prefixed MiDaS keys)."""
    from transformers import BitConfig, DPTConfig

    bb = "pretrained.model.patch_embed.backbone."
    n_stages = _count(sd, re.escape(bb) + r"stages\.(\d+)\.")
    depths = [_count(sd, re.escape(bb) + rf"stages\.{s}\.blocks\.(\d+)\.") for s in range(n_stages)]
    widths = [int(sd[f"{bb}stages.{s}.blocks.0.conv3.weight"].shape[0]) for s in range(n_stages)]
    backbone = BitConfig(global_padding="same", layer_type="bottleneck", depths=depths, hidden_sizes=widths,
                         embedding_size=int(sd[bb + "stem.conv.weight"].shape[0]), embedding_dynamic_padding=True,
                         out_features=[f"stage{i + 1}" for i in range(n_stages)])
    hidden = int(sd["pretrained.model.blocks.0.attn.qkv.weight"].shape[1])
    layers = _count(sd, r"pretrained\.model\.blocks\.(\d+)\.")
    grid = int(round((sd["pretrained.model.pos_embed"].shape[1] - 1) ** 0.5))
    patch = 2 ** (len(depths) + 1)    # the stem (/4) and every later stage (/2) downsample
    return DPTConfig(
        is_hybrid=True, backbone_config=backbone, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // HEAD_DIM),
        intermediate_size=int(sd["pretrained.model.blocks.0.mlp.fc1.weight"].shape[0]),
        image_size=grid * patch, patch_size=patch, backbone_out_indices=[0, 1, layers - 4, layers - 1],
        backbone_featmap_shape=[1, widths[-1], grid, grid], neck_ignore_stages=[0, 1],
        neck_hidden_sizes=[widths[0], widths[1], int(sd["pretrained.act_postprocess3.3.weight"].shape[0]),
                           int(sd["pretrained.act_postprocess4.3.weight"].shape[0])],
        reassemble_factors=[1, 1, 1, 0.5], readout_type="project",
        fusion_hidden_size=int(sd["scratch.layer1_rn.weight"].shape[0]),
        head_hidden_size=int(sd["scratch.output_conv.2.weight"].shape[0]),
        use_batch_norm_in_fusion_residual=False)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The `depth_model.model.*` tensors of a checkpoint, without the prefix (safetensors: only those are read)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k[len(PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}
    return {k[len(PREFIX):]: v for k, v in load_state_dict(path).items() if k.startswith(PREFIX)}


def build_model(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from transformers import DPTForDepthEstimation

    try:
        model = DPTForDepthEstimation(config_from_weights(sd))
    except (KeyError, ValueError, IndexError) as exc:
        raise EngineError(f"the embedded depth model has a layout this app does not know ({exc})") from None
    missing, unexpected = model.load_state_dict(rename(sd), strict=False)
    if missing or unexpected:
        raise EngineError(f"the embedded depth model does not fit DPT-Hybrid (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model.eval().requires_grad_(False)


def load_embedded_estimator(model) -> DepthEstimator | None:
    """The estimator inside `model`'s file, or None (with a log line) if it cannot be used."""
    try:
        weights = read_weights(model.file.path)
        if not weights:
            return None
        network = build_model({k: v.float() for k, v in weights.items()})
    except EngineError as exc:
        log.warning("%s: %s", model.name, exc)
        return None
    log.info("%s: using its embedded MiDaS depth model", model.name)
    return DepthEstimator(f"{model.file.stem} (embedded MiDaS)", network, int(network.config.image_size), MIDAS_MEAN,
                          MIDAS_STD)
