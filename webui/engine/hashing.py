"""A1111-compatible model hashes and a persistent, thread-safe cache for them.

- Full sha256: checkpoints/VAEs show its first 10 hex ("Model hash"), embeddings its first 12 ("TI hashes").
- "addnet" hash: sha256 of a safetensors file without its header; LoRAs show its first 12 hex ("Lora hashes").
- Legacy hash: A1111's pre-2023 8-hex hash of a 64 KiB slice at offset 1 MiB.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from webui.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
CACHE_VERSION = 1


def _sha256_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(CHUNK_SIZE), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def addnet_hash_safetensors(path: str | os.PathLike[str]) -> str:
    """sha256 of everything after the 8-byte little-endian header length and the JSON header."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        return _sha256_stream(f)


def legacy_model_hash(path: str | os.PathLike[str]) -> str:
    """A1111's old model hash: first 8 hex of sha256 over 0x10000 bytes at offset 0x100000."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def short_hash(sha: str) -> str:
    """The 10-hex form A1111 writes as "Model hash" / "VAE hash"."""
    return sha[:10]


def lora_short_hash(sha: str) -> str:
    """The 12-hex form A1111 writes in "Lora hashes" (of the addnet hash) and "TI hashes" (of sha256)."""
    return sha[:12]


HASHERS: dict[str, Callable[[Path], str]] = {
    "sha256": sha256_file,
    "addnet": addnet_hash_safetensors,
}


class HashCache:
    """Hashes of files, computed lazily and remembered in a JSON file across runs.

    An entry is keyed by hash kind and absolute path and is valid while the file's size and mtime match.
    The cache file is rewritten atomically after each new hash; an unreadable one is ignored and replaced.
    """

    def __init__(self, cache_file: str | os.PathLike[str]):
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._path_locks: dict[tuple[str, str], threading.Lock] = {}
        self._entries: dict[str, dict[str, dict[str, Any]]] = self._load()

    def sha256(self, path: str | os.PathLike[str]) -> str:
        return self.get("sha256", path)

    def addnet_hash(self, path: str | os.PathLike[str]) -> str:
        return self.get("addnet", path)

    def get(self, kind: str, path: str | os.PathLike[str]) -> str:
        """The `kind` hash of `path`, from the cache if the file is unchanged, else computed and stored."""
        hasher = HASHERS[kind]
        key = _key(path)
        with self._path_lock(kind, key):  # one thread hashes a file; others wait and then hit the cache
            cached = self.lookup(kind, path)
            if cached is not None:
                return cached
            st = os.stat(key)
            value = hasher(Path(key))
            self._store(kind, key, st, value)
            return value

    def lookup(self, kind: str, path: str | os.PathLike[str]) -> str | None:
        """The cached hash if still valid, without computing anything."""
        key = _key(path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return None
        with self._lock:
            entry = self._entries.get(kind, {}).get(key)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry.get("hash")
        return None

    def _path_lock(self, kind: str, key: str) -> threading.Lock:
        with self._lock:
            return self._path_locks.setdefault((kind, key), threading.Lock())

    def _store(self, kind: str, key: str, st: os.stat_result, value: str) -> None:
        with self._lock:
            self._entries.setdefault(kind, {})[key] = {
                "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": value,
            }
            text = json.dumps({"version": CACHE_VERSION, "hashes": self._entries}, indent=1, sort_keys=True)
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.cache_file, text)

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable hash cache %s: %s", self.cache_file, e)
            return {}
        valid = isinstance(data, dict) and data.get("version") == CACHE_VERSION
        if not valid or not isinstance(data.get("hashes"), dict):
            log.warning("ignoring malformed hash cache %s", self.cache_file)
            return {}
        return {kind: {k: v for k, v in entries.items() if isinstance(v, dict)}
                for kind, entries in data["hashes"].items() if isinstance(entries, dict)}


def _key(path: str | os.PathLike[str]) -> str:
    return str(Path(path).resolve())
