"""Loading every checkpoint family through the normal path, and the ways a model file can be bad."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from conftest import small_params
from webui.engine import safe_load
from webui.engine.detect import Family
from webui.engine.engine import Engine
from webui.engine.errors import CheckpointError
from webui.engine.paths import DataPaths
from webui.testing.fixtures import FAMILIES, build_components, write_checkpoint, write_vae

EXPECTED_FAMILY = {
    "sd1": Family.SD1, "sd1-inpaint": Family.SD1_INPAINT, "sd2": Family.SD2, "sd2-v": Family.SD2,
    "sd2-inpaint": Family.SD2_INPAINT, "sd2-depth": Family.SD2_DEPTH, "sdxl": Family.SDXL,
    "sdxl-refiner": Family.SDXL_REFINER, "sdxl-inpaint": Family.SDXL_INPAINT,
}


def _engine(data_dir: Path, **kw) -> Engine:
    return Engine(DataPaths.create(data_dir), device="cpu", **kw)


def _assert_same_weights(reference: torch.nn.Module, loaded: torch.nn.Module) -> None:
    ref = reference.state_dict()
    got = loaded.state_dict()
    assert set(got) <= set(ref) | {k for k in got if k.endswith("position_ids")}
    for key, value in got.items():
        if key.endswith("position_ids"):
            continue
        assert torch.equal(value, ref[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_exactly_and_generates(family, checkpoints):
    path = checkpoints.path(family)
    engine = _engine(checkpoints.data_dir)
    model = engine.load_checkpoint(path.name)
    assert model.family is EXPECTED_FAMILY[family]
    expected_pred = "v_prediction" if family == "sd2-v" else "epsilon"
    assert model.prediction_type == expected_pred
    reference = build_components(family, seed=0)
    _assert_same_weights(reference["unet"], model.unet)
    _assert_same_weights(reference["vae"], model.own_vae)
    loaded_towers = [e.model for e in model.prompt_encoder.encoders]
    ref_towers = [reference[k] for k in ("text_encoder", "text_encoder_2") if k in reference]
    for ref, got in zip(ref_towers, loaded_towers):
        _assert_same_weights(ref, got)
    result = engine.txt2img(small_params(steps=2, batch_size=1))
    image = result.images[0]
    assert image.size == (64, 64)
    pixels = torch.tensor(list(image.getdata()), dtype=torch.float32)
    assert pixels.std() > 0, "a constant image means the pipeline produced nothing"


def test_sd2_text_encoder_conditions_on_penultimate_layer(checkpoints):
    """SD2 files store one resblock more than is used; the loaded tower must have one layer fewer."""
    engine = _engine(checkpoints.data_dir)
    model = engine.load_checkpoint(checkpoints.path("sd2").name)
    stored = len({k.split(".")[4] for k in safe_load.load_state_dict(checkpoints.path("sd2"))
                  if k.startswith("cond_stage_model.model.transformer.resblocks.")})
    assert model.prompt_encoder.encoders[0].model.config.num_hidden_layers == stored - 1


def test_prediction_type_from_sidecar_and_override(tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    eps = write_checkpoint(ckpt_dir / "base.safetensors", "sd2")
    (ckpt_dir / "base.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    engine = _engine(tmp_path)
    assert engine.load_checkpoint(eps.name).prediction_type == "v_prediction"
    (ckpt_dir / "base.yaml").unlink()
    (ckpt_dir / "base.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    assert _engine(tmp_path).load_checkpoint(eps.name).prediction_type == "v_prediction"
    overridden = _engine(tmp_path, prediction_overrides={"base.safetensors": "epsilon"})
    assert overridden.load_checkpoint(eps.name).prediction_type == "epsilon"


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = safe_load.load_state_dict
    monkeypatch.setattr("webui.engine.model_manager.load_state_dict",
                        lambda p, **kw: reads.append(Path(p).name) or original(p, **kw))
    return reads


def test_cached_checkpoint_is_not_read_again(checkpoints, monkeypatch):
    a, b = checkpoints.path("sd1"), checkpoints.path("sd1", name="sd1-second", seed=3)
    engine = _engine(checkpoints.data_dir, ckpt_cache=2)
    reads = _count_reads(monkeypatch)
    first = engine.load_checkpoint(a.name)
    second = engine.load_checkpoint(b.name)
    again = engine.load_checkpoint(a.name)
    assert again is first and second is not first
    assert reads == [a.name, b.name]
    assert engine.models.current is first


def test_cache_size_one_evicts(checkpoints, monkeypatch):
    a, b = checkpoints.path("sd1"), checkpoints.path("sd1", name="sd1-second", seed=3)
    engine = _engine(checkpoints.data_dir, ckpt_cache=1)
    reads = _count_reads(monkeypatch)
    engine.load_checkpoint(a.name)
    engine.load_checkpoint(b.name)
    engine.load_checkpoint(a.name)
    assert reads == [a.name, b.name, a.name]


def test_vae_choice_swaps_only_the_vae(checkpoints):
    ckpt = checkpoints.path("sd1")
    vae_dir = checkpoints.data_dir / "models" / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    write_vae(vae_dir / "other.safetensors", seed=7)
    engine = _engine(checkpoints.data_dir)
    model = engine.load_checkpoint(ckpt.name)
    unet, encoders = model.unet, model.prompt_encoder
    base = engine.txt2img(small_params(steps=2)).images[0]
    engine.set_vae("other.safetensors")
    assert model.unet is unet and model.prompt_encoder is encoders
    assert model.vae is not model.own_vae and model.vae_file.name == "other.safetensors"
    swapped = engine.txt2img(small_params(steps=2))
    assert swapped.images[0].tobytes() != base.tobytes()
    assert "VAE: other.safetensors" in swapped.infotexts[0] and "VAE hash: " in swapped.infotexts[0]
    engine.set_vae("None")
    assert model.vae is model.own_vae
    assert engine.txt2img(small_params(steps=2)).images[0].tobytes() == base.tobytes()
    with pytest.raises(CheckpointError, match="no such VAE"):
        engine.set_vae("missing.safetensors")


def test_automatic_vae_uses_file_named_after_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    write_checkpoint(ckpt_dir / "mine.safetensors", "sd1")
    write_vae(ckpt_dir / "mine.vae.safetensors", seed=5)
    engine = _engine(tmp_path)
    assert [m.name for m in engine.models.checkpoints()] == ["mine.safetensors"]
    model = engine.load_checkpoint("mine")
    assert model.vae_file is not None and model.vae_file.path.name == "mine.vae.safetensors"


def test_model_hash_is_sha256_prefix_and_cached(checkpoints):
    import hashlib

    path = checkpoints.path("sd1")
    engine = _engine(checkpoints.data_dir)
    engine.load_checkpoint(path.name)
    result = engine.txt2img(small_params(steps=1))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"Model hash: {sha[:10]}" in result.infotexts[0]
    assert engine.models.title(engine.models.resolve(path.name)) == f"{path.name} [{sha[:10]}]"
    cache = json.loads((checkpoints.data_dir / "cache.json").read_text())
    assert sha in json.dumps(cache)


def test_diffusers_folder_matches_single_file(checkpoints, tmp_path):
    """The same weights as a diffusers folder and as a single file give the same pixels."""
    from webui.testing.fixtures import build_components

    folder = checkpoints.ckpt_dir / "sd1-folder"
    if not folder.exists():
        comps = build_components("sd1", seed=0)
        for name, module in comps.items():
            module.save_pretrained(folder / name)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    engine = _engine(checkpoints.data_dir)
    engine.load_checkpoint(checkpoints.path("sd1").name)
    single = engine.txt2img(small_params(steps=3)).images[0]
    model = engine.load_checkpoint("sd1-folder")
    assert model.file.is_diffusers_folder and model.family is Family.SD1
    assert engine.txt2img(small_params(steps=3)).images[0].tobytes() == single.tobytes()


# ---- bad files --------------------------------------------------------------------------------------

def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    files = {
        "truncated": data[: len(data) // 2],
        "tiny": b"\x01\x02",
        "bad header length": struct.pack("<Q", 10**12) + data[8:],
        "header not json": struct.pack("<Q", 16) + b"this is not json" + b"\0" * 64,
    }
    header = json.loads(data[8:8 + header_len])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, len(data) * 10]
    raw = json.dumps(header).encode()
    files["offsets beyond file"] = struct.pack("<Q", len(raw)) + raw + data[8 + header_len:]
    out = {}
    for reason, content in files.items():
        path = folder / (reason.replace(" ", "_") + ".safetensors")
        path.write_bytes(content)
        out[reason] = path
    return out


def test_corrupt_safetensors_get_clear_errors_and_engine_keeps_working(checkpoints, tmp_path):
    engine = _engine(checkpoints.data_dir)
    engine.load_checkpoint(checkpoints.path("sd1").name)
    before = engine.txt2img(small_params(steps=2)).images[0].tobytes()
    expected = {"truncated": "beyond the end", "tiny": "truncated", "bad header length": "bad header length",
                "header not json": "not valid JSON", "offsets beyond file": "beyond the end"}
    for reason, path in _bad_files(tmp_path, checkpoints.path("sd1")).items():
        with pytest.raises(CheckpointError) as err:
            engine.load_checkpoint(path)
        assert path.name in str(err.value) and expected[reason] in str(err.value), (reason, str(err.value))
    assert engine.txt2img(small_params(steps=2)).images[0].tobytes() == before


def test_unknown_architecture_is_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "random.safetensors"
    save_file({"some.weight": torch.zeros(3, 3)}, str(path))
    engine = _engine(tmp_path)
    with pytest.raises(CheckpointError, match="random.safetensors: not a Stable Diffusion checkpoint"):
        engine.load_checkpoint(path)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        safe_load.load_state_dict(evil)
    assert not marker.exists()
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        safe_load.load_state_dict(legacy)
    assert not marker.exists()


def test_plain_ckpt_with_state_dict_loads(checkpoints, tmp_path):
    sd = safe_load.load_state_dict(checkpoints.path("sd1"))
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    torch.save({"state_dict": sd, "global_step": 875000}, ckpt_dir / "old.ckpt")
    engine = _engine(tmp_path)
    model = engine.load_checkpoint("old.ckpt")
    assert model.family is Family.SD1


def test_safetensors_preferred_over_pickle_with_same_name(checkpoints, tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    write_checkpoint(ckpt_dir / "dup.safetensors", "sd1")
    torch.save({"state_dict": {}}, ckpt_dir / "dup.ckpt")
    assert [m.name for m in _engine(tmp_path).models.checkpoints()] == ["dup.safetensors"]


def test_unknown_checkpoint_name_lists_available(checkpoints):
    checkpoints.path("sd1")
    engine = _engine(checkpoints.data_dir)
    with pytest.raises(CheckpointError, match="Available: .*sd1.safetensors"):
        engine.load_checkpoint("nope.safetensors")
