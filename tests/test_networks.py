"""LoRA / LyCORIS networks on the SD1 and SDXL fixtures.

The network files are written here, with kohya key names taken from the fixture models' real module names
(SD1: diffusers names; SDXL: original SGM names, written out by hand below), in every supported format.
Each applied ΔW is checked against a reference computed in this file from the file's own tensors: for
LoRA/LoCon by running the factors as the layers they stand for, for LyCORIS formats by their formulas.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import small_params
from webui.engine.engine import Engine
from webui.engine.hashing import addnet_hash_safetensors
from webui.engine.infotext import parse_infotext
from webui.engine.networks import NetworkApplier, NetworkUse, uses_from_prompt

RANK = 4
ALPHA = 2.0


# ------------------------------------------------------------------------------- network file writers

def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * 0.2


def _factor(n: int) -> tuple[int, int]:
    a = int(n ** 0.5)
    while n % a:
        a -= 1
    return a, n // a


def module_tensors(fmt: str, shape: tuple[int, ...], g: torch.Generator) -> dict[str, torch.Tensor]:
    """One module's tensors in `fmt` for a target weight of `shape` ([out, in] or [out, in, k, k])."""
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    conv = bool(kernel)
    flat_in = inp * int(np.prod(kernel)) if conv else inp
    alpha = {"alpha": torch.tensor(ALPHA)}
    if fmt == "lora" or (fmt == "locon_mid" and (not conv or kernel == (1, 1))):
        down = _rand(g, RANK, inp, *kernel)
        up = _rand(g, out, RANK, *((1, 1) if conv else ()))
        return {"lora_down.weight": down, "lora_up.weight": up, **alpha}
    if fmt == "locon_mid":
        return {"lora_down.weight": _rand(g, RANK, inp, 1, 1), "lora_mid.weight": _rand(g, RANK, RANK, *kernel),
                "lora_up.weight": _rand(g, out, RANK, 1, 1), **alpha}
    if fmt == "loha":
        return {"hada_w1_a": _rand(g, out, RANK), "hada_w1_b": _rand(g, RANK, flat_in),
                "hada_w2_a": _rand(g, out, RANK), "hada_w2_b": _rand(g, RANK, flat_in), **alpha}
    if fmt == "lokr":
        o1, o2 = _factor(out)
        i1, i2 = _factor(inp)
        return {"lokr_w1": _rand(g, o1, i1), "lokr_w2_a": _rand(g, o2, RANK),
                "lokr_w2_b": _rand(g, RANK, i2 * int(np.prod(kernel or (1,)))), **alpha}
    if fmt == "full":
        return {"diff": _rand(g, *shape), "diff_b": _rand(g, out)}
    raise ValueError(fmt)


def reference_delta(fmt: str, t: dict[str, torch.Tensor], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW (and Δbias) the file means, computed independently of the engine."""
    scale = ALPHA / RANK
    if fmt in ("lora", "locon_mid"):
        return _delta_by_running_layers(t, weight) * scale, None
    if fmt == "loha":
        w = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return w.reshape(weight.shape) * scale, None
    if fmt == "lokr":
        w = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"])
        return w.reshape(weight.shape) * scale, None
    return t["diff"], t["diff_b"]


def _delta_by_running_layers(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """A LoRA is layers down → (mid) → up; ΔW is the linear map they compute together (probed with a basis)."""
    down, up, mid = t["lora_down.weight"], t["lora_up.weight"], t.get("lora_mid.weight")
    if weight.ndim == 2:
        basis = torch.eye(weight.shape[1])
        return (F.linear(F.linear(basis, down), up)).T
    k = weight.shape[-1]
    pad = k // 2
    # Probe each input channel/offset with a delta image: the response at the centre is the kernel.
    size = 2 * k + 1
    kernel = torch.zeros_like(weight)
    for c in range(weight.shape[1]):
        x = torch.zeros(1, weight.shape[1], size, size)
        x[0, c, k, k] = 1.0
        h = F.conv2d(x, down, padding=down.shape[-1] // 2)
        if mid is not None:
            h = F.conv2d(h, mid, padding=mid.shape[-1] // 2)
        y = F.conv2d(h, up)
        # y[o, k+pad-i, k+pad-j] = W[o, c, i, j] (cross-correlation)
        kernel[:, c] = y[0, :, k - pad:k + pad + 1, k - pad:k + pad + 1].flip(-1).flip(-2)
    return kernel


# Module paths in the fixture models; kohya names are derived from them ('.' → '_').
SD1_TARGETS = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("unet", "down_blocks.0.attentions.0.proj_in"),
    ("unet", "down_blocks.0.resnets.0.conv1"),
    ("unet", "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2"),
    ("te0", "text_model.encoder.layers.0.self_attn.q_proj"),
    ("te0", "text_model.encoder.layers.2.mlp.fc1"),
]
# SDXL files name UNet modules by the original SGM layout: (kohya name, diffusers module of our fixture).
SDXL_TARGETS = [
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k", "unet", "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k"),
    ("lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj", "unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    ("lora_unet_input_blocks_1_0_in_layers_2", "unet", "down_blocks.0.resnets.0.conv1"),
    ("lora_unet_output_blocks_0_0_emb_layers_1", "unet", "up_blocks.0.resnets.0.time_emb_proj"),
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "te0", "text_model.encoder.layers.0.self_attn.q_proj"),
    ("lora_te2_text_model_encoder_layers_1_mlp_fc1", "te1", "text_model.encoder.layers.1.mlp.fc1"),
]


def sd1_targets() -> list[tuple[str, str, str]]:
    return [(("lora_unet_" if part == "unet" else "lora_te_") + path.replace(".", "_"), part, path)
            for part, path in SD1_TARGETS]


def find_module(model, part: str, path: str) -> torch.nn.Module:
    if part == "unet":
        return model.unet.get_submodule(path)
    tower = model.prompt_encoder.encoders[int(part[2:])].model
    try:
        return tower.get_submodule(path)
    except AttributeError:   # transformers 5 flattened CLIPTextModel (no `text_model.` level)
        return tower.get_submodule(path.removeprefix("text_model."))


def write_network(path: Path, model, targets, fmt: str, seed: int = 0,
                  metadata: dict[str, str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """A kohya/LyCORIS-named safetensors file; returns its tensors per kohya module name."""
    g = torch.Generator().manual_seed(seed)
    modules = {name: module_tensors(fmt, tuple(find_module(model, part, p).weight.shape), g)
               for name, part, p in targets}
    flat = {f"{name}.{suffix}": t.contiguous() for name, ts in modules.items() for suffix, t in ts.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path), metadata=metadata)
    return modules


# ----------------------------------------------------------------------------------------- fixtures



@pytest.fixture(scope="module")
def sd1(tmp_path_factory, checkpoints) -> Engine:
    return checkpoints.engine("sd1", root=tmp_path_factory.mktemp("lora_sd1"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory, checkpoints) -> Engine:
    return checkpoints.engine("sdxl", root=tmp_path_factory.mktemp("lora_sdxl"))


def snapshot(model) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in model.unet.state_dict().items()}
    for i, enc in enumerate(model.prompt_encoder.encoders):
        out.update({f"te{i}.{k}": v.clone() for k, v in enc.model.state_dict().items()})
    return out


def assert_same_weights(model, saved: dict[str, torch.Tensor]) -> None:
    now = snapshot(model)
    assert now.keys() == saved.keys()
    changed = [k for k in saved if not torch.equal(saved[k], now[k])]
    assert not changed, f"{len(changed)} tensors differ, e.g. {changed[:3]}"


def params(prompt: str, **kw):
    return small_params(prompt=prompt, steps=2, sampler_name="Euler", seed=77, **kw)


FORMATS = ["lora", "locon_mid", "loha", "lokr", "full"]


@pytest.fixture(scope="module")
def sd1_files(sd1) -> dict[str, dict]:
    model = sd1.models.current
    return {fmt: write_network(sd1.paths.lora_dir / f"{fmt}.safetensors", model, sd1_targets(), fmt, seed=i)
            for i, fmt in enumerate(FORMATS)}


@pytest.fixture(scope="module")
def sd1_base(sd1):
    return sd1.txt2img(params("a red circle"))


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("fmt", FORMATS)
def test_applied_delta_equals_reference(sd1, sd1_files, fmt):
    model = sd1.models.current
    before = snapshot(model)
    activation = sd1.networks.activate(model, f"<lora:{fmt}:0.7>")
    try:
        assert activation.report.applied == [fmt] and not activation.report.skipped
        for name, part, path in sd1_targets():
            module = find_module(model, part, path)
            key = f"{part}.{path}"
            weight_key = f"{key}.weight" if part == "unet" else _te_key(before, part, path, "weight")
            ref_w, ref_b = reference_delta(fmt, sd1_files[fmt][name], before[weight_key])
            torch.testing.assert_close(module.weight.data - before[weight_key], 0.7 * ref_w, atol=2e-5, rtol=1e-4)
            if ref_b is not None and module.bias is not None:
                bias_key = weight_key[:-len("weight")] + "bias"
                torch.testing.assert_close(module.bias.data - before[bias_key], 0.7 * ref_b, atol=2e-5, rtol=1e-4)
        untouched = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
        assert torch.equal(model.unet.get_submodule(untouched[5:-7]).weight.data, before[untouched])
    finally:
        sd1.networks.deactivate(model)
    assert_same_weights(model, before)


def _te_key(saved: dict, part: str, path: str, suffix: str) -> str:
    for candidate in (f"{part}.{path}.{suffix}", f"{part}.{path.removeprefix('text_model.')}.{suffix}"):
        if candidate in saved:
            return candidate
    raise KeyError(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_changes_weight_zero_is_base_and_weights_are_restored(sd1, sd1_files, sd1_base, fmt):
    model = sd1.models.current
    before = snapshot(model)
    one = sd1.txt2img(params(f"a red circle <lora:{fmt}:1>"))
    assert_same_weights(model, before)
    assert one.images[0].tobytes() != sd1_base.images[0].tobytes()
    zero = sd1.txt2img(params(f"a red circle <lora:{fmt}:0>"))
    assert zero.images[0].tobytes() == sd1_base.images[0].tobytes()
    assert_same_weights(model, before)
    # The tag stays in the saved prompt; the encoder never saw it (weight 0 gave the base image).
    assert one.infotexts[0].startswith(f"a red circle <lora:{fmt}:1>\n")


def test_two_networks_add_up(sd1, sd1_files):
    model = sd1.models.current
    before = snapshot(model)
    name, part, path = sd1_targets()[0]
    key = f"unet.{path}.weight"
    activation = sd1.networks.activate(model, "<lora:lora:0.5> <lora:loha:-1>")
    try:
        assert activation.report.applied == ["lora", "loha"]
        expected = 0.5 * reference_delta("lora", sd1_files["lora"][name], before[key])[0] \
            - reference_delta("loha", sd1_files["loha"][name], before[key])[0]
        torch.testing.assert_close(find_module(model, part, path).weight.data - before[key], expected,
                                   atol=2e-5, rtol=1e-4)
    finally:
        sd1.networks.deactivate(model)
    both = sd1.txt2img(params("a red circle <lora:lora:0.5> <lora:loha:-1>"))
    only_one = sd1.txt2img(params("a red circle <lora:lora:0.5>"))
    assert both.images[0].tobytes() != only_one.images[0].tobytes()
    assert_same_weights(model, before)
    assert 'Lora hashes: "lora: ' in both.infotexts[0] and ", loha: " in both.infotexts[0]


def test_text_encoder_and_unet_weights_are_separate(sd1, sd1_files):
    model = sd1.models.current
    before = snapshot(model)
    te_path = "text_model.encoder.layers.0.self_attn.q_proj"
    te_key = _te_key(before, "te0", te_path, "weight")
    unet_key = f"unet.{SD1_TARGETS[0][1]}.weight"
    for prompt, te_changed, unet_changed in [("<lora:lora:0:1>", False, True), ("<lora:lora:te=1:unet=0>", True, False),
                                             ("<lora:lora:1:0.5>", True, True)]:
        sd1.networks.activate(model, prompt)
        try:
            assert (not torch.equal(find_module(model, "te0", te_path).weight.data, before[te_key])) == te_changed
            assert (not torch.equal(model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data, before[unet_key])) == unet_changed
        finally:
            sd1.networks.deactivate(model)
    assert_same_weights(model, before)


def test_reapplying_the_same_set_reuses_the_patched_weights(sd1, sd1_files):
    model = sd1.models.current
    original = model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data
    first = sd1.networks.activate(model, "<lora:lokr:0.8>")
    patched = model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data
    sd1.networks.deactivate(model)
    again = sd1.networks.activate(model, "<lora:lokr:0.8>")
    assert not first.report.reused and again.report.reused
    assert model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data.data_ptr() == patched.data_ptr()
    at_08 = patched.clone()
    other = sd1.networks.activate(model, "<lora:lokr:0.9>")   # another weight: computed anew ...
    now = model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data
    assert not other.report.reused
    assert now.data_ptr() == patched.data_ptr()   # ... into the previous set's tensor, not fresh memory
    torch.testing.assert_close(now - original, (at_08 - original) * (0.9 / 0.8), atol=2e-5, rtol=1e-4)
    sd1.networks.deactivate(model)
    assert model.unet.get_submodule(SD1_TARGETS[0][1]).weight.data.data_ptr() == original.data_ptr()


def test_in_place_mode_edits_the_weights_restores_exactly_and_lazily(sd1, sd1_files, sd1_base):
    """The GPU way (weights edited in place, originals kept in CPU RAM), run here on CPU: the same weights and
    images as the swap way, no second copy of the weights, left applied between jobs of the same set, and
    restored to the bit by a job without networks."""
    model = sd1.models.current
    before = snapshot(model)
    module = model.unet.get_submodule(SD1_TARGETS[0][1])
    prompt = "a red circle <lora:lora:0.6> <lora:loha:0.4>"
    swapped = sd1.txt2img(params(prompt))
    sd1.networks.activate(model, prompt)
    swapped_weight = module.weight.data.clone()
    sd1.networks.deactivate(model)
    swap_applier, sd1.networks.applier = sd1.networks.applier, NetworkApplier(in_place=True)
    try:
        ptr = module.weight.data_ptr()
        first = sd1.txt2img(params(prompt))
        assert module.weight.data_ptr() == ptr                       # edited in place, no new tensor
        assert torch.equal(module.weight.data, swapped_weight)      # the same values as the swap way
        assert sd1.networks.applier.is_applied(model)                # left applied after the job
        assert first.images[0].tobytes() == swapped.images[0].tobytes()
        again = sd1.networks.activate(model, prompt)
        assert again.report.reused
        base = sd1.txt2img(params("a red circle"))                   # another set (none): restored first
        assert not sd1.networks.applier.is_applied(model) and module.weight.data_ptr() == ptr
        assert_same_weights(model, before)
        assert base.images[0].tobytes() == sd1_base.images[0].tobytes()
    finally:
        sd1.networks.applier.restore(model)
        sd1.networks.applier = swap_applier
    assert_same_weights(model, before)


def test_infotext_has_a1111_lora_hash(sd1, sd1_files):
    result = sd1.txt2img(params("a red circle, <lora:lora:0.6>"))
    expected = addnet_hash_safetensors(sd1.paths.lora_dir / "lora.safetensors")[:12]
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Lora hashes"] == f"lora: {expected}"
    assert parsed["Prompt"] == "a red circle, <lora:lora:0.6>"


def test_missing_network_is_reported_not_fatal(sd1, sd1_base):
    result = sd1.txt2img(params("a red circle <lora:no_such_lora:1>"))
    assert result.images[0].tobytes() == sd1_base.images[0].tobytes()
    assert parse_infotext(result.infotexts[0])["Lora skipped"] == "no_such_lora: not found"


def test_network_for_another_family_is_skipped(sd1, sdxl, sd1_base):
    write_network(sd1.paths.lora_dir / "xl_style.safetensors", sdxl.models.current, SDXL_TARGETS, "lora",
                  metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    before = snapshot(sd1.models.current)
    result = sd1.txt2img(params("a red circle <lora:xl_style:1>"))
    assert result.images[0].tobytes() == sd1_base.images[0].tobytes()
    skipped = parse_infotext(result.infotexts[0])["Lora skipped"]
    assert skipped.startswith("xl_style: ") and "SDXL" in skipped
    assert "Lora hashes" not in result.infotexts[0]
    assert_same_weights(sd1.models.current, before)


@pytest.mark.parametrize("fmt", ["lora", "loha"])
def test_sdxl_sgm_names_and_both_text_encoders(sdxl, fmt):
    model = sdxl.models.current
    tensors = write_network(sdxl.paths.lora_dir / f"xl_{fmt}.safetensors", model, SDXL_TARGETS, fmt, seed=5)
    before = snapshot(model)
    base = sdxl.txt2img(params("a red circle"))
    activation = sdxl.networks.activate(model, f"<lora:xl_{fmt}:1>")
    try:
        assert activation.report.applied == [f"xl_{fmt}"]
        for name, part, path in SDXL_TARGETS:
            key = f"unet.{path}.weight" if part == "unet" else _te_key(before, part, path, "weight")
            ref, _ = reference_delta(fmt, tensors[name], before[key])
            torch.testing.assert_close(find_module(model, part, path).weight.data - before[key], ref, atol=2e-5, rtol=1e-4)
    finally:
        sdxl.networks.deactivate(model)
    styled = sdxl.txt2img(params(f"a red circle <lora:xl_{fmt}:1>"))
    assert styled.images[0].tobytes() != base.images[0].tobytes()
    assert_same_weights(model, before)


def test_listing_reads_ss_metadata(sd1):
    tags = {"style": {"ink": 3, "pen": 1}}
    path = sd1.paths.lora_dir / "sub" / "inked.safetensors"
    write_network(path, sd1.models.current, sd1_targets()[:1], "lora",
                  metadata={"ss_output_name": "ink_style", "ss_network_dim": "4", "ss_tag_frequency": json.dumps(tags)})
    files = {f.name: f for f in sd1.list_loras(refresh=True)}
    item = sd1.networks.library.describe(files["inked"])
    assert item["alias"] == "ink_style" and item["path"] == str(path)
    assert item["metadata"]["ss_network_dim"] == "4" and item["metadata"]["ss_tag_frequency"] == tags
    assert sd1.networks.library.find("ink_style").path == path      # the alias works in tags too
    assert sd1.networks.library.find("sub/inked").path == path


@pytest.mark.parametrize("prompt,uses", [
    ("<lora:a>", [NetworkUse("a", 1.0, 1.0)]),
    ("<lora:a:0.5>", [NetworkUse("a", 0.5, 0.5)]),
    ("<lora:a:0.2:0.8>", [NetworkUse("a", 0.2, 0.8)]),
    ("<lora:a:1:1:16>", [NetworkUse("a", 1.0, 1.0, 16)]),
    ("<lora:a:te=0.3>", [NetworkUse("a", 0.3, 0.3)]),
    ("<lora:a:0.5:unet=2>", [NetworkUse("a", 0.5, 2.0)]),
    ("<lyco:b:0.4> <hypernet:c:1>", [NetworkUse("b", 0.4, 0.4)]),
])
def test_tag_forms(prompt, uses):
    assert uses_from_prompt(prompt) == uses


def test_sd2_uses_diffusers_unet_names_and_lora_te(tmp_path_factory, checkpoints):
    engine = checkpoints.engine("sd2", root=tmp_path_factory.mktemp("lora_sd2"))
    model = engine.models.current
    targets = [("lora_unet_" + p.replace(".", "_"), "unet", p) for p in
               ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v", "up_blocks.1.resnets.2.conv2")]
    targets.append(("lora_te_text_model_encoder_layers_1_self_attn_out_proj", "te0", "text_model.encoder.layers.1.self_attn.out_proj"))
    tensors = write_network(engine.paths.lora_dir / "sd2.safetensors", model, targets, "lora", seed=9)
    before = snapshot(model)
    engine.networks.activate(model, "<lora:sd2:1>")
    try:
        for name, part, path in targets:
            key = f"unet.{path}.weight" if part == "unet" else _te_key(before, part, path, "weight")
            ref, _ = reference_delta("lora", tensors[name], before[key])
            torch.testing.assert_close(find_module(model, part, path).weight.data - before[key], ref, atol=2e-5, rtol=1e-4)
    finally:
        engine.networks.deactivate(model)
    assert_same_weights(model, before)


def test_dora_scale_sets_the_merged_weights_column_norms():
    from webui.engine.networks.lora_formats import compute_delta

    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 5, generator=g)
    tensors = {"lora_down.weight": torch.randn(2, 5, generator=g), "lora_up.weight": torch.randn(6, 2, generator=g),
               "alpha": torch.tensor(2.0), "dora_scale": torch.rand(1, 5, generator=g) + 0.5}
    delta, _ = compute_delta(tensors, weight)
    merged = weight + delta
    torch.testing.assert_close(merged.norm(dim=0), tensors["dora_scale"][0])
    direction = weight + tensors["lora_up.weight"] @ tensors["lora_down.weight"]   # α/r = 1
    torch.testing.assert_close(merged / merged.norm(dim=0), direction / direction.norm(dim=0))
