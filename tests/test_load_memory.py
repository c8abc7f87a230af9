"""Loading keeps one copy of the weights: zero-copy views of the file's map where the dtype already fits,
and a cast that gives the file's pages back as it goes where it does not (issue #10, point 4)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.safe_load import load_state_dict
from webui.testing.fixtures import write_checkpoint, write_vae


def _file_mappings(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, Rss bytes) of each mapping of `path` in this process, from /proc/self/smaps."""
    out, current = [], None
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
        if head:
            current = (int(head.group(1), 16), int(head.group(2), 16)) if head.group(3) == target else None
        elif current and line.startswith("Rss:"):
            out.append((*current, int(line.split()[1]) * 1024))
    return out


def _inside(t: torch.Tensor, maps: list[tuple[int, int, int]]) -> bool:
    ptr = t.data_ptr()
    return any(start <= ptr and ptr + t.numel() * t.element_size() <= end for start, end, _ in maps)


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, Path]:
    """~24 MB of fp16 and fp32 tensors (big enough that page accounting is not noise), plus an int buffer."""
    root = tmp_path_factory.mktemp("medium")
    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(1024, 1024 + i, generator=g) for i in range(6)}
    tensors["ids"] = torch.arange(77)
    tensors["odd"] = torch.randn(3, generator=g)   # an odd size, so later offsets are not page-aligned
    paths = {}
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        paths[name] = root / f"{name}.safetensors"
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(paths[name]))
    paths["reference"] = tensors
    return paths


def test_same_dtype_is_a_view_of_the_file_map(medium):
    sd = load_state_dict(medium["fp32"], dtype=torch.float32)
    maps = _file_mappings(medium["fp32"])
    assert maps, "the file should be memory-mapped"
    assert all(_inside(t, maps) for t in sd.values())
    for key, ref in medium["reference"].items():
        assert torch.equal(sd[key], ref)


def test_cast_while_reading_drops_the_source_pages(medium):
    sd = load_state_dict(medium["fp16"], dtype=torch.float32)
    for key, ref in medium["reference"].items():
        expected = ref.to(torch.float16).float() if ref.is_floating_point() else ref
        assert sd[key].dtype == expected.dtype and torch.equal(sd[key], expected)
    size = medium["fp16"].stat().st_size
    still_mapped = sum(rss for *_, rss in _file_mappings(medium["fp16"]))
    # Only the int buffer (a view) and the partial pages at tensor edges may stay: far below the file size.
    assert still_mapped < 0.05 * size, (still_mapped, size)
    assert not any(_inside(t, _file_mappings(medium["fp16"])) for k, t in sd.items() if t.is_floating_point())


def test_cast_results_are_writable_and_independent(medium):
    a = load_state_dict(medium["fp32"], dtype=torch.float32)
    b = load_state_dict(medium["fp32"], dtype=torch.float32)
    a["w0"].add_(1.0)   # a private (copy-on-write) map: writing one load touches neither the file nor another load
    assert torch.equal(b["w0"], medium["reference"]["w0"])
    assert torch.equal(load_state_dict(medium["fp32"])["w0"], medium["reference"]["w0"])


@pytest.fixture(scope="module")
def sd1_fp32_engine(tmp_path_factory):
    from webui.engine.engine import Engine
    from webui.engine.paths import DataPaths

    root = tmp_path_factory.mktemp("engine")
    ckpt_dir = root / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    write_checkpoint(ckpt_dir / "sd1.safetensors", "sd1", dtype=torch.float32)
    (root / "models" / "VAE").mkdir(parents=True)
    write_vae(root / "models" / "VAE" / "other.safetensors", seed=3)
    engine = Engine(DataPaths.create(root), device="cpu")
    engine.load_checkpoint("sd1.safetensors")
    return engine, ckpt_dir / "sd1.safetensors"


def test_engine_load_keeps_unet_weights_in_the_file_map(sd1_fp32_engine):
    engine, path = sd1_fp32_engine
    model = engine.models.current
    maps = _file_mappings(path)
    params = [p for p in model.unet.parameters()]
    inside = sum(_inside(p, maps) for p in params)
    # Conversion renames keys and may reshape a few (attention 1x1 convs); everything else is the file's memory.
    assert inside >= 0.9 * len(params), (inside, len(params))
    assert all(p.dtype == torch.float32 for p in params)


def test_vae_change_never_touches_the_unet(sd1_fp32_engine):
    engine, _ = sd1_fp32_engine
    model = engine.models.current
    unet = model.unet
    before = {n: p.data_ptr() for n, p in unet.named_parameters()}
    engine.set_vae("other.safetensors")
    assert model.vae_file is not None and model.vae is not model.own_vae
    engine.set_vae("Automatic")
    assert engine.models.current is model and model.unet is unet
    assert {n: p.data_ptr() for n, p in unet.named_parameters()} == before
