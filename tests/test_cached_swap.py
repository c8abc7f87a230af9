"""Switching back to a checkpoint held in the RAM cache (issue #10, "cached swap under 1 s").

A cache hit must reuse the loaded modules as they are: no read of the checkpoint file, no hashing, no copy
of the weights, and no garbage-collection pass (a full `gc.collect()` with a full-size model loaded took
~0.9 s, nearly all of the measured 1.12 s swap). A fresh load or an eviction still gives memory back.
"""
from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from conftest import small_params
from webui.engine import hashing, memory_modes, model_manager
from webui.engine.engine import Engine
from webui.engine.paths import DataPaths

NAMES = ("swap-a.safetensors", "swap-b.safetensors")


@pytest.fixture(scope="module")
def engine(checkpoints, tmp_path_factory):
    checkpoints.path("sd1", name="swap-a")
    checkpoints.path("sd1", name="swap-b", seed=1)
    root = tmp_path_factory.mktemp("swap")
    return Engine(DataPaths.create(root, ckpt_dir=checkpoints.ckpt_dir), device="cpu", ckpt_cache=2)


def _weight_ptrs(model) -> dict[str, int]:
    return {f"{i}.{name}": t.data_ptr() for i, module in enumerate(model.modules())
            for name, t in module.state_dict().items()}


class _Spies:
    """Records file opens of the given paths, state-dict loads, file hashing, heap trims, model preparation."""

    def __init__(self, monkeypatch, paths: list[Path]):
        self.watched = {str(p.resolve()) for p in paths}
        self.opened: list[str] = []
        self.calls: dict[str, int] = {"load_state_dict": 0, "sha256_file": 0, "trim_heap": 0, "prepare": 0}
        real_open, real_os_open = builtins.open, os.open
        monkeypatch.setattr(builtins, "open", lambda file, *a, **k: self._saw(file) or real_open(file, *a, **k))
        monkeypatch.setattr(os, "open", lambda file, *a, **k: self._saw(file) or real_os_open(file, *a, **k))
        self._count(monkeypatch, model_manager, "load_state_dict")
        self._count(monkeypatch, hashing, "sha256_file")
        self._count(monkeypatch, model_manager, "trim_heap")
        self._count(monkeypatch, memory_modes, "prepare")

    def _saw(self, file) -> None:
        if isinstance(file, (str, os.PathLike)) and str(Path(file).resolve()) in self.watched:
            self.opened.append(str(file))

    def _count(self, monkeypatch, module, name: str) -> None:
        real = getattr(module, name)

        def spy(*args, **kwargs):
            self.calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def _paths(engine) -> list[Path]:
    return [engine.models.resolve(name).path for name in NAMES]


def test_cached_swap_reuses_the_loaded_model_as_it_is(engine, monkeypatch):
    a = engine.load_checkpoint(NAMES[0])
    engine.models.model_hash(a)               # as the first generation does
    engine.load_checkpoint(NAMES[1])
    unet, ptrs = a.unet, _weight_ptrs(a)

    spies = _Spies(monkeypatch, _paths(engine))
    back = engine.load_checkpoint(NAMES[0])
    assert back is a and engine.models.current is a and a.unet is unet
    assert _weight_ptrs(a) == ptrs            # no weight was copied, cast or moved
    assert spies.opened == []                 # the file was not read ...
    assert spies.calls["load_state_dict"] == 0
    assert spies.calls["sha256_file"] == 0    # ... nor hashed
    assert spies.calls["trim_heap"] == 0      # and no gc pass: nothing was freed

    result = engine.txt2img(small_params(steps=1))   # generating on it needs neither either
    assert len(result.images) == 1 and "Model hash" in result.infotexts[0]
    assert spies.opened == [] and spies.calls["sha256_file"] == 0 and spies.calls["load_state_dict"] == 0
    assert _weight_ptrs(a) == ptrs


def test_selecting_the_current_model_again_redoes_nothing(engine, monkeypatch):
    a = engine.load_checkpoint(NAMES[0])
    ptrs = _weight_ptrs(a)
    spies = _Spies(monkeypatch, _paths(engine))
    assert engine.load_checkpoint(NAMES[0]) is a
    assert spies.calls == {"load_state_dict": 0, "sha256_file": 0, "trim_heap": 0, "prepare": 0}
    assert spies.opened == [] and _weight_ptrs(a) == ptrs


def test_fresh_loads_and_evictions_still_give_memory_back(engine, monkeypatch):
    engine.load_checkpoint(NAMES[1])
    engine.load_checkpoint(NAMES[0])          # both cached, swap-a current
    engine.models.cache_size = 1
    try:
        spies = _Spies(monkeypatch, _paths(engine))
        b = engine.load_checkpoint(NAMES[1])  # a hit, but the smaller cache evicts swap-a: heap trimmed
        assert spies.calls["trim_heap"] == 1 and spies.calls["load_state_dict"] == 0
        assert engine.models.current is b and len(engine.models._loaded) == 1
        a = engine.load_checkpoint(NAMES[0])  # read again (and swap-b evicted): trimmed again
        assert spies.calls["trim_heap"] == 2 and spies.calls["load_state_dict"] == 1
        assert engine.load_checkpoint(NAMES[0]) is a and spies.calls["trim_heap"] == 2   # a plain hit: none
    finally:
        engine.models.cache_size = 2
