"""Which Stable Diffusion family a state dict belongs to, read from its keys and shapes alone.

The rules follow A1111's `guess_model_config_from_state_dict` and ComfyUI's shape-driven detection.
What shapes cannot tell (SD2 epsilon vs v-prediction) is decided by `prediction.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
REFINER_TE_PREFIX = "conditioner.embedders.0.model."
DEPTH_MODEL_PREFIX = "depth_model."


class Family(str, Enum):
    SD1 = "sd1"
    SD1_INPAINT = "sd1-inpaint"
    SD2 = "sd2"
    SD2_INPAINT = "sd2-inpaint"
    SD2_DEPTH = "sd2-depth"
    SDXL = "sdxl"
    SDXL_INPAINT = "sdxl-inpaint"
    SDXL_REFINER = "sdxl-refiner"

    @property
    def base(self) -> str:
        """'sd1', 'sd2' or 'sdxl': the family conventions this model follows."""
        return "sdxl" if self.value.startswith("sdxl") else self.value.split("-")[0]

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Family.SD1: "SD 1.x", Family.SD1_INPAINT: "SD 1.x inpainting", Family.SD2: "SD 2.x",
    Family.SD2_INPAINT: "SD 2.x inpainting", Family.SD2_DEPTH: "SD 2.x depth", Family.SDXL: "SDXL",
    Family.SDXL_INPAINT: "SDXL inpainting", Family.SDXL_REFINER: "SDXL refiner",
}


@dataclass(frozen=True)
class Detection:
    family: Family
    unet_in_channels: int
    has_depth_model: bool
    has_vae: bool


class UnknownArchitecture(ValueError):
    pass


def _has_prefix(sd: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def detect_family(sd: dict[str, torch.Tensor]) -> Detection:
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise UnknownArchitecture("no Stable Diffusion UNet found (missing 'model.diffusion_model.input_blocks.0.0.weight')")
    in_ch = int(conv_in.shape[1])
    family = _family_from_text_encoders(sd, in_ch)
    return Detection(family=family, unet_in_channels=in_ch,
                     has_depth_model=_has_prefix(sd, DEPTH_MODEL_PREFIX), has_vae=_has_prefix(sd, VAE_PREFIX))


def _family_from_text_encoders(sd: dict[str, torch.Tensor], in_ch: int) -> Family:
    if SDXL_TE2_PREFIX + "ln_final.weight" in sd:
        return Family.SDXL_INPAINT if in_ch == 9 else Family.SDXL
    if REFINER_TE_PREFIX + "ln_final.weight" in sd:
        return Family.SDXL_REFINER
    if SD2_TE_PREFIX + "ln_final.weight" in sd:
        if in_ch == 9:
            return Family.SD2_INPAINT
        if in_ch == 5 or _has_prefix(sd, DEPTH_MODEL_PREFIX):
            return Family.SD2_DEPTH
        return Family.SD2
    if _has_prefix(sd, SD1_TE_PREFIX + "text_model.") or _has_prefix(sd, SD1_TE_PREFIX):
        if in_ch == 9:
            return Family.SD1_INPAINT
        if in_ch == 4:
            return Family.SD1
        raise UnknownArchitecture(f"SD1 text encoder with an unsupported {in_ch}-channel UNet input (instruct-pix2pix is not supported)")
    raise UnknownArchitecture("no known text encoder keys (cond_stage_model.* or conditioner.embedders.*)")
