"""Epsilon or v-prediction: the one thing about SD2 that tensor shapes cannot tell.

Order of precedence:
1. a per-model override from settings (`prediction_overrides` maps checkpoint name → "epsilon"/"v_prediction");
2. a file beside the checkpoint: `NAME.yaml` with `parameterization: "v"` (A1111's v2-inference-v.yaml), or
   `NAME.json` with `{"prediction_type": "v_prediction"}`;
3. markers in the file: SDXL `v_pred` key;
4. for plain SD2 models, A1111's probe: run the UNet once at t=999 on a constant input with a constant
   context; a v-model's output sits well below its input (mean(out − x) < −1). Inpaint and depth SD2 models
   are the 512 epsilon models. SD1 and SDXL are epsilon.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .detect import Family

EPSILON, V_PREDICTION = "epsilon", "v_prediction"
_YAML_V = re.compile(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*$", re.MULTILINE)


def from_sidecar(checkpoint: Path) -> str | None:
    base = checkpoint.with_suffix("") if checkpoint.is_file() else checkpoint
    yaml_file, json_file = base.with_suffix(".yaml"), base.with_suffix(".json")
    if yaml_file.is_file():
        return V_PREDICTION if _YAML_V.search(yaml_file.read_text(errors="replace")) else EPSILON
    if json_file.is_file():
        try:
            value = json.loads(json_file.read_text()).get("prediction_type")
        except (json.JSONDecodeError, AttributeError):
            return None
        if value in ("v", "v_prediction", "v-prediction"):
            return V_PREDICTION
        if value in ("eps", "epsilon"):
            return EPSILON
    return None


@torch.no_grad()
def probe_v_prediction(unet) -> bool:
    """A1111's heuristic (sd_models_config.is_using_v_parameterization_for_sd2)."""
    param = next(unet.parameters())
    x = torch.ones(1, 4, 8, 8, device=param.device, dtype=param.dtype) * 0.5
    context = torch.ones(1, 2, unet.config.cross_attention_dim, device=param.device, dtype=param.dtype) * 0.5
    t = torch.tensor([999], device=param.device)
    out = unet(x, t, encoder_hidden_states=context).sample
    return (out - x).mean().item() < -1


def decide(family: Family, checkpoint: Path, name: str, state_keys, overrides: dict[str, str], unet) -> tuple[str, str]:
    """Returns (prediction_type, how it was decided) — the reason is logged and shown in model info."""
    if overrides.get(name) in (EPSILON, V_PREDICTION):
        return overrides[name], "settings override"
    sidecar = from_sidecar(checkpoint)
    if sidecar:
        return sidecar, "config file beside the checkpoint"
    if family.base == "sdxl":
        return (V_PREDICTION, "v_pred key") if "v_pred" in state_keys else (EPSILON, "family default")
    if family is Family.SD2:
        return (V_PREDICTION, "UNet probe") if probe_v_prediction(unet) else (EPSILON, "UNet probe")
    return EPSILON, "family default"
