"""LoRA / LyCORIS networks named in prompts with `<lora:name:weight>` tags.

- `lora_files`: the LoRA folder, metadata, hashes, parsed-file cache;
- `lora_formats`: ΔW of each module type (LoRA, LoCon, LoHa, LoKr, full, norm, IA3, DoRA);
- `lora_keys`: kohya key → model module (SD1/SD2 diffusers names, SDXL SGM names, te/te1/te2);
- `apply`: several networks at once, exact restore, cached re-apply;
- `manager`: from a prompt's tags to applied weights and infotext.
"""
from .apply import ApplyReport, NetworkApplier, NetworkUse
from .lora_files import LoraFile, LoraLibrary, ParsedNetwork
from .manager import Networks, uses_from_prompt

__all__ = ["ApplyReport", "LoraFile", "LoraLibrary", "NetworkApplier", "NetworkUse", "Networks", "ParsedNetwork",
           "uses_from_prompt"]
