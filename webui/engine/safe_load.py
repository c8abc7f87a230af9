"""Reading tensors from model files without trusting them.

safetensors headers are checked before any tensor is touched, so that a truncated or hostile file gets a
message naming the file and the fault. Pickle files (.ckpt/.pt/.bin) are read only through
`torch.load(weights_only=True)`, whose restricted unpickler refuses any global that is not a tensor type:
nothing inside such a file ever runs.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def read_safetensors_header(path: Path) -> dict:
    """Parse and validate a safetensors header; raise CheckpointError on any inconsistency."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(path, f"file is truncated ({size} bytes; a safetensors file starts with an 8-byte header length)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise CheckpointError(path, f"bad header length {header_len} for a file of {size} bytes (truncated or not a safetensors file)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    _check_offsets(path, header, body_len=size - 8 - header_len)
    return header


def _check_offsets(path: Path, header: dict, body_len: int) -> None:
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            n_items = 1
            for dim in info["shape"]:
                n_items *= int(dim)
            item_size = _DTYPE_SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"tensor {name!r} has a malformed header entry") from None
        if not (0 <= start <= end <= body_len):
            raise CheckpointError(path, f"tensor {name!r} points beyond the end of the file (truncated download?)")
        if end - start != n_items * item_size:
            raise CheckpointError(path, f"tensor {name!r} size does not match its shape and dtype")


def safetensors_metadata(path: Path) -> dict[str, str]:
    return read_safetensors_header(path).get("__metadata__") or {}


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    read_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types; keep the message
        raise CheckpointError(path, f"could not read tensors ({exc})") from None


def load_pickle_weights_only(path: Path) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "not a PyTorch zip archive; legacy pickle files are refused for safety")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "forbidden content"
        raise CheckpointError(
            path, f"refused: the pickle asks for more than plain tensors, so it was not loaded and nothing in it ran "
                  f"({first_line}). Convert it to .safetensors with a tool you trust.") from None
    except Exception as exc:
        raise CheckpointError(path, f"could not read file ({exc})") from None
    return _unwrap_state_dict(path, data)


def _unwrap_state_dict(path: Path, data) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(path, "file does not contain a dictionary of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read every tensor of a model file into CPU memory."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return load_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return load_pickle_weights_only(path)
    raise CheckpointError(path, f"unsupported file type {suffix!r}; use .safetensors")
