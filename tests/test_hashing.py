import hashlib
import json
import os
import threading

import pytest
import torch
from safetensors.torch import save_file

from webui.engine import hashing
from webui.engine.hashing import (
    HashCache, addnet_hash_safetensors, legacy_model_hash, lora_short_hash, sha256_file, short_hash,
)


@pytest.fixture
def blob(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(os.urandom(3 * hashing.CHUNK_SIZE + 12345))  # several chunks plus a partial one
    return path


@pytest.fixture
def count_reads(monkeypatch):
    """Count calls of the hash functions the cache dispatches to."""
    calls = {"sha256": 0, "addnet": 0}

    def counting(kind, fn):
        def wrapper(path):
            calls[kind] += 1
            return fn(path)
        return wrapper

    monkeypatch.setitem(hashing.HASHERS, "sha256", counting("sha256", sha256_file))
    monkeypatch.setitem(hashing.HASHERS, "addnet", counting("addnet", addnet_hash_safetensors))
    return calls


def test_sha256_matches_hashlib(blob):
    assert sha256_file(blob) == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_short_forms():
    sha = hashlib.sha256(b"x").hexdigest()
    assert short_hash(sha) == sha[:10] and len(short_hash(sha)) == 10
    assert lora_short_hash(sha) == sha[:12]


def test_legacy_model_hash(blob):
    data = blob.read_bytes()
    assert legacy_model_hash(blob) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_addnet_hash_is_sha256_of_safetensors_body(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"a.weight": torch.arange(600, dtype=torch.float32).reshape(20, 30),
               "b.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_network_dim": "4"})
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    body = data[8 + header_len:]
    assert len(body) == 600 * 4 + 4
    assert addnet_hash_safetensors(path) == hashlib.sha256(body).hexdigest()
    assert addnet_hash_safetensors(path) != sha256_file(path)


def test_cache_hit_does_not_reread(tmp_path, blob, count_reads):
    cache = HashCache(tmp_path / "cache.json")
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert cache.sha256(blob) == expected
    assert cache.sha256(str(blob)) == expected
    assert count_reads["sha256"] == 1
    # a new cache object on the same file reads the persisted entry
    again = HashCache(tmp_path / "cache.json")
    assert again.sha256(blob) == expected
    assert count_reads["sha256"] == 1
    stored = json.loads((tmp_path / "cache.json").read_text())
    assert stored["hashes"]["sha256"][str(blob.resolve())]["hash"] == expected


def test_invalidation_on_mtime_and_size_change(tmp_path, blob, count_reads):
    cache = HashCache(tmp_path / "cache.json")
    first = cache.sha256(blob)
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache.lookup("sha256", blob) is None
    assert cache.sha256(blob) == first  # same content, recomputed
    assert count_reads["sha256"] == 2
    with open(blob, "ab") as f:
        f.write(b"more")
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same mtime, size differs
    assert cache.sha256(blob) == hashlib.sha256(blob.read_bytes()).hexdigest() != first
    assert count_reads["sha256"] == 3


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"version": 1, "hashes": 5}',
                                     b'{"version": 99, "hashes": {}}'])
def test_corrupt_cache_is_ignored_and_replaced(tmp_path, blob, garbage):
    cache_file = tmp_path / "cache.json"
    cache_file.write_bytes(garbage)
    cache = HashCache(cache_file)
    assert cache.sha256(blob) == sha256_file(blob)
    stored = json.loads(cache_file.read_text())
    assert stored["version"] == hashing.CACHE_VERSION
    assert list(stored["hashes"]["sha256"]) == [str(blob.resolve())]
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_kinds_are_cached_separately(tmp_path, count_reads):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    cache = HashCache(tmp_path / "sub" / "cache.json")  # parent folder created on first write
    assert cache.addnet_hash(path) == addnet_hash_safetensors(path)
    assert cache.sha256(path) == sha256_file(path)
    assert cache.addnet_hash(path) == addnet_hash_safetensors(path)
    assert count_reads == {"sha256": 1, "addnet": 1}


def test_missing_file_raises(tmp_path):
    cache = HashCache(tmp_path / "cache.json")
    with pytest.raises(FileNotFoundError):
        cache.sha256(tmp_path / "nope.safetensors")
    assert cache.lookup("sha256", tmp_path / "nope.safetensors") is None


def test_threads_hash_each_file_once(tmp_path, count_reads):
    files = []
    for i in range(4):
        p = tmp_path / f"m{i}.bin"
        p.write_bytes(os.urandom(200_000))
        files.append(p)
    cache = HashCache(tmp_path / "cache.json")
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def work(i):
        for p in files:
            h = cache.sha256(p)
            with lock:
                results.append((files.index(p), h))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_reads["sha256"] == len(files)
    for idx, h in results:
        assert h == hashlib.sha256(files[idx].read_bytes()).hexdigest()
    stored = json.loads((tmp_path / "cache.json").read_text())
    assert len(stored["hashes"]["sha256"]) == len(files)
