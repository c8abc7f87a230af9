"""LoRA/LyCORIS files on disk: discovery, metadata (`ss_*`), hashes, and a cache of parsed tensors.

A parsed file is its tensors grouped by module: `{"lora_unet_..._to_q": {"lora_down.weight": T, ...}}`
(the key split at its first '.'). Parsed files are kept in a small LRU keyed by path, size and mtime, so a
second generation with the same LoRA does not read the file again.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..hashing import HashCache, lora_short_hash
from ..safe_load import load_state_dict, safetensors_metadata

log = logging.getLogger(__name__)
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass
class LoraFile:
    name: str          # file stem: what `<lora:name:1>` uses
    path: Path
    relative: str      # path below the LoRA folder, without suffix ("styles/ink")
    _metadata: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = read_metadata(self.path)
        return self._metadata

    @property
    def alias(self) -> str:
        """A1111's alias: the training output name from the metadata, else the file name."""
        value = self.metadata.get("ss_output_name")
        return value if isinstance(value, str) and value else self.name


@dataclass
class ParsedNetwork:
    file: LoraFile
    modules: dict[str, dict[str, torch.Tensor]]
    stamp: tuple = ()    # (path, size, mtime): identifies this version of the file

    def family_hint(self) -> str | None:
        """'sd1', 'sd2' or 'sdxl' from metadata or key names, if they tell."""
        meta = self.file.metadata
        base = str(meta.get("ss_base_model_version", "") or meta.get("modelspec.architecture", "")).lower()
        if "xl" in base:
            return "sdxl"
        if "v2" in base or "sd-v2" in base or "sd_v2" in base:
            return "sd2"
        if "v1" in base:
            return "sd1"
        if any(k.startswith(("lora_te1_", "lora_te2_")) for k in self.modules):
            return "sdxl"
        return None


def read_metadata(path: Path) -> dict[str, Any]:
    """The safetensors `__metadata__`, with JSON-looking values (`ss_tag_frequency`, ...) decoded."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        raw = safetensors_metadata(path)
    except Exception as exc:  # a broken header must not break a listing
        log.warning("cannot read metadata of %s: %s", path, exc)
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def group_modules(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        base, dot, suffix = key.partition(".")
        if dot:
            modules.setdefault(base, {})[suffix] = tensor
    return modules


def list_lora_files(root: Path) -> list[LoraFile]:
    if not root.is_dir():
        return []
    files = []
    for path in sorted(root.rglob("*"), key=lambda p: str(p).lower()):
        if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
            rel = path.relative_to(root).with_suffix("").as_posix()
            files.append(LoraFile(path.stem, path, rel))
    return files


class LoraLibrary:
    """The LoRA folder: listing (refreshed on demand), lookup by name, parsing with an LRU cache, hashes."""

    def __init__(self, root: Path, hashes: HashCache | None = None, cache_size: int = 8):
        self.root = Path(root)
        self.hashes = hashes
        self.cache_size = cache_size
        self._files: list[LoraFile] | None = None
        self._parsed: OrderedDict[tuple, ParsedNetwork] = OrderedDict()

    def refresh(self) -> None:
        self._files = list_lora_files(self.root)

    def files(self) -> list[LoraFile]:
        if self._files is None:
            self.refresh()
        return list(self._files)

    def find(self, name: str) -> LoraFile | None:
        """By file name, relative path or alias (A1111 looks names and aliases up together)."""
        for refresh in (False, True):
            if refresh:
                self.refresh()
            files = self.files()
            for key in ("name", "relative", "alias"):
                for f in files:
                    if getattr(f, key) == name:
                        return f
        return None

    def load(self, file: LoraFile) -> ParsedNetwork:
        st = file.path.stat()
        key = (str(file.path.resolve()), st.st_size, st.st_mtime_ns)
        if key in self._parsed:
            self._parsed.move_to_end(key)
            return self._parsed[key]
        parsed = ParsedNetwork(file, group_modules(load_state_dict(file.path)), key)
        self._parsed[key] = parsed
        while len(self._parsed) > self.cache_size:
            self._parsed.popitem(last=False)
        return parsed

    def short_hash(self, file: LoraFile) -> str | None:
        """A1111's LoRA hash: the first 12 hex of the sha256 of the safetensors body (no header)."""
        if self.hashes is None or file.path.suffix.lower() != ".safetensors":
            return None
        return lora_short_hash(self.hashes.addnet_hash(file.path))

    def describe(self, file: LoraFile) -> dict[str, Any]:
        """A1111's /sdapi/v1/loras item."""
        return {"name": file.name, "alias": file.alias, "path": str(file.path), "metadata": file.metadata}
