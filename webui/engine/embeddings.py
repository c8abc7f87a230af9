"""Textual-inversion embeddings: files in the embeddings folders, matched to a model's text encoders.

Accepted files (A1111's `create_embedding_from_data`):
- A1111/.pt style: `{"string_to_param": {"*": Tensor[n, width]}, ...}`;
- SDXL: `{"clip_l": Tensor[n, 768], "clip_g": Tensor[n, 1280]}`;
- a single tensor in a one-entry dict (diffusers concepts, `emb_params` in .safetensors).

`.pt`/`.bin` go through `torch.load(weights_only=True)` only. The trigger word is the file name without
its extension. Which model an embedding fits is decided by its vector widths; the rest are "skipped".
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .hashing import HashCache, lora_short_hash
from .safe_load import load_safetensors

log = logging.getLogger(__name__)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
# Which key of an SDXL embedding each text tower reads.
SDXL_KEYS = {"clip_l": "clip_l", "open_clip_g": "clip_g"}


class EmbeddingError(ValueError):
    pass


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: torch.Tensor | None = None                                 # [n, width] for one-tower files
    per_tower: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: {"clip_l": .., "clip_g": ..}
    step: int | None = None
    sha256: str | None = None

    @property
    def num_vectors(self) -> int:
        tensor = self.vectors if self.vectors is not None else next(iter(self.per_tower.values()))
        return int(tensor.shape[0])

    @property
    def shape(self) -> int:
        """A1111's 'shape': the vector width (summed over towers for SDXL)."""
        if self.vectors is not None:
            return int(self.vectors.shape[-1])
        return sum(int(t.shape[-1]) for t in self.per_tower.values())

    def vectors_for(self, kind: str, width: int) -> torch.Tensor | None:
        """The vectors a text tower of `kind` and `width` uses, or None if this embedding has none for it."""
        if self.per_tower:
            key = SDXL_KEYS.get(kind)
            tensor = self.per_tower.get(key) if key else None
        else:
            tensor = self.vectors
        if tensor is None or tensor.shape[-1] != width:
            return None
        return tensor


def _tensor(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingError(f"expected a tensor, found {type(value).__name__}")
    tensor = value.detach().float()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def embedding_from_data(name: str, path: Path, data) -> Embedding:
    if not isinstance(data, dict):
        raise EmbeddingError("not a dictionary")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or not params:
            raise EmbeddingError("empty string_to_param")
        step = data.get("step")
        return Embedding(name, path, vectors=_tensor(next(iter(params.values()))),
                         step=int(step) if isinstance(step, (int, float)) else None)
    if "clip_l" in data and "clip_g" in data:
        towers = {"clip_l": _tensor(data["clip_l"]), "clip_g": _tensor(data["clip_g"])}
        if towers["clip_l"].shape[0] != towers["clip_g"].shape[0]:
            raise EmbeddingError("clip_l and clip_g have different vector counts")
        return Embedding(name, path, per_tower=towers)
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:
        return Embedding(name, path, vectors=_tensor(tensors[0]))
    raise EmbeddingError(f"unrecognised layout (keys: {', '.join(map(str, list(data)[:5]))})")


def _load_pickle(path: Path):
    if not zipfile.is_zipfile(path):
        raise EmbeddingError("not a PyTorch zip archive; legacy pickles are refused")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise EmbeddingError("refused: the file asks for more than plain tensors; nothing in it ran") from None


def load_embedding(path: Path) -> Embedding:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = load_safetensors(path)
    elif suffix in (".pt", ".bin"):
        data = _load_pickle(path)
    else:
        raise EmbeddingError(f"unsupported file type {suffix}")
    return embedding_from_data(path.stem, path, data)


@dataclass
class EmbeddingSet:
    """The embeddings one model can use (`loaded`), those it cannot (`skipped`), and a token matcher."""
    loaded: dict[str, Embedding]
    skipped: dict[str, Embedding]
    hashes: HashCache | None = None
    _matchers: dict[int, dict[int, list[tuple[tuple[int, ...], Embedding]]]] = field(default_factory=dict, repr=False)

    def matcher(self, tokenizer) -> dict[int, list[tuple[tuple[int, ...], Embedding]]]:
        """first token id → [(token ids of the name, embedding)], longest names first."""
        key = id(tokenizer)
        if key not in self._matchers:
            table: dict[int, list] = {}
            for emb in self.loaded.values():
                ids = tuple(tokenizer(emb.name, add_special_tokens=False, truncation=False).input_ids)
                if ids:
                    table.setdefault(ids[0], []).append((ids, emb))
            for entries in table.values():
                entries.sort(key=lambda e: len(e[0]), reverse=True)
            self._matchers[key] = table
        return self._matchers[key]

    def find_at(self, tokenizer, ids: list[int], pos: int) -> tuple[Embedding | None, int]:
        """The embedding whose name's tokens start at `ids[pos]` (longest wins) and that name's length."""
        for name_ids, emb in self.matcher(tokenizer).get(ids[pos], ()):
            if tuple(ids[pos:pos + len(name_ids)]) == name_ids:
                return emb, len(name_ids)
        return None, 0

    def short_hash(self, emb: Embedding) -> str | None:
        if emb.sha256 is None and self.hashes is not None:
            emb.sha256 = self.hashes.sha256(emb.path)
        return lora_short_hash(emb.sha256) if emb.sha256 else None


def tower_widths(model) -> list[tuple[str, int]]:
    """(kind, token-embedding width) of each text tower of an SDModel."""
    out = []
    for enc in model.prompt_encoder.encoders:
        out.append((enc.kind, int(enc.model.get_input_embeddings().weight.shape[1])))
    return out


def fits(emb: Embedding, towers: list[tuple[str, int]]) -> bool:
    """An SDXL embedding needs exactly SDXL's towers; a one-tensor embedding a one-tower model of its width."""
    if not towers:
        return False
    if emb.per_tower:
        needed = {SDXL_KEYS.get(kind) for kind, _ in towers}
        if needed != set(emb.per_tower):
            return False
    elif len(towers) != 1:
        return False
    return all(emb.vectors_for(kind, width) is not None for kind, width in towers)


class EmbeddingLibrary:
    """All embedding files under the folders. Files are read once and re-read when they change on disk."""

    def __init__(self, folders: tuple[Path, ...] | list[Path], hashes: HashCache | None = None):
        self.folders = [Path(f) for f in folders]
        self.hashes = hashes
        self._cache: dict[Path, tuple[tuple[int, int], Embedding | None]] = {}
        self.errors: dict[str, str] = {}

    def files(self) -> list[Path]:
        found = []
        for folder in self.folders:
            if folder.is_dir():
                found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in EMBEDDING_SUFFIXES and p.is_file())
        return found

    def all(self) -> dict[str, Embedding]:
        """name → embedding; the first file of a name wins."""
        out: dict[str, Embedding] = {}
        self.errors = {}
        for path in self.files():
            emb = self._load(path)
            if emb is not None and emb.name not in out:
                out[emb.name] = emb
        return out

    def _load(self, path: Path) -> Embedding | None:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            emb = load_embedding(path)
        except Exception as exc:  # a bad file is listed as an error, never fatal
            log.warning("skipping embedding %s: %s", path, exc)
            self.errors[path.stem] = str(exc)
            emb = None
        self._cache[path] = (stamp, emb)
        return emb

    def for_towers(self, towers: list[tuple[str, int]]) -> EmbeddingSet:
        """Split the embeddings by whether every text tower (kind, width) has vectors of its width."""
        loaded, skipped = {}, {}
        for name, emb in self.all().items():
            (loaded if fits(emb, towers) else skipped)[name] = emb
        return EmbeddingSet(loaded, skipped, self.hashes)

    def for_model(self, model) -> EmbeddingSet:
        return self.for_towers(tower_widths(model))


def describe(emb: Embedding) -> dict:
    """A1111's /sdapi/v1/embeddings item."""
    return {"step": emb.step, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": emb.shape,
            "vectors": emb.num_vectors}

