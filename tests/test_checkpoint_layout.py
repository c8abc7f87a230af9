"""The single-file writer against diffusers' own LDM→diffusers converters, and real-size key layouts on meta."""
from __future__ import annotations

import os

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.engine import checkpoint_writer as cw
from webui.testing import fixtures as fx

U = cw.UNET_PREFIX


# ------------------------------------------------------------------------------------------ helpers

def _fresh_like(module: torch.nn.Module) -> torch.nn.Module:
    with torch.device("meta"):
        if isinstance(module, (UNet2DConditionModel, AutoencoderKL)):
            return type(module)(**module.config)
        return type(module)(module.config)


def _load_strict_and_compare(original: torch.nn.Module, converted: dict[str, torch.Tensor]) -> None:
    """Load `converted` into a fresh module of the same config (strict) and compare with `original` exactly."""
    fresh = _fresh_like(original)
    fresh.load_state_dict(converted, strict=True, assign=True)
    expected = original.state_dict()
    got = fresh.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def _flatten_clip(converted: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 CLIPTextModel has no `text_model.` wrapper (diffusers strips it the same way).
    if hasattr(model, "text_model"):
        return converted
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def _count(sd: dict, prefix: str) -> int:
    return sum(k.startswith(prefix) for k in sd)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every family written once (float32, with real-file extras), with the modules it came from."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for family in fx.FAMILIES:
        components = fx.build_components(family, seed=3)
        state_dict = fx.checkpoint_state_dict(family, components, real_file_extras=True, seed=3)
        path = cw.save_single_file(folder / f"{family}.safetensors", state_dict)
        out[family] = (components, load_file(path), path)
    return out


# --------------------------------------------------------------------------------- round trip (tiny)

@pytest.mark.parametrize("family", fx.FAMILIES)
def test_unet_and_vae_round_trip_through_diffusers_converters(written, family):
    components, sd, _ = written[family]
    unet, vae = components["unet"], components["vae"]
    converted_unet = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    assert len(converted_unet) == _count(sd, U)  # every UNet tensor in the file was consumed
    _load_strict_and_compare(unet, converted_unet)
    converted_vae = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    assert len(converted_vae) == _count(sd, cw.VAE_PREFIX)
    _load_strict_and_compare(vae, converted_vae)


@pytest.mark.parametrize("family", [f for f in fx.FAMILIES if fx.spec(f).arch == "sd1"])
def test_sd1_text_encoder_round_trip(written, family):
    components, sd, _ = written[family]
    te = components["text_encoder"]
    converted = convert_ldm_clip_checkpoint(sd)
    position_ids = converted.pop("text_model.embeddings.position_ids")  # real-file extra; not persistent in HF
    assert torch.equal(position_ids, torch.arange(77).unsqueeze(0))
    _load_strict_and_compare(te, _flatten_clip(converted, te))


@pytest.mark.parametrize("family", [f for f in fx.FAMILIES if fx.spec(f).arch == "sd2"])
def test_sd2_open_clip_round_trip_with_extra_stored_layer(written, family):
    components, sd, _ = written[family]
    te = components["text_encoder"]
    used = te.config.num_hidden_layers
    stored = {int(k.split(".")[4]) for k in sd if k.startswith(cw.SD2_TE_PREFIX + "transformer.resblocks.")}
    assert stored == set(range(used + fx.SD2_EXTRA_TEXT_LAYERS))
    converted = _flatten_clip(convert_open_clip_checkpoint(te, sd, prefix=cw.SD2_TE_PREFIX), te)
    extra = {k for k in converted if k.startswith(f"encoder.layers.{used}.")}
    assert len(extra) == 16  # q/k/v/out proj, 2 layer norms, fc1/fc2: weights and biases
    _load_strict_and_compare(te, {k: v for k, v in converted.items() if k not in extra})
    width = te.config.hidden_size
    assert sd[cw.SD2_TE_PREFIX + "text_projection"].shape == (width, width)
    assert sd[cw.SD2_TE_PREFIX + "logit_scale"].shape == ()


@pytest.mark.parametrize("family", ["sdxl", "sdxl-inpaint", "sdxl-refiner"])
def test_sdxl_text_encoders_round_trip(written, family):
    components, sd, _ = written[family]
    te2 = components["text_encoder_2"]
    prefix = cw.REFINER_TE_PREFIX if family == "sdxl-refiner" else cw.SDXL_TE2_PREFIX
    converted2 = convert_open_clip_checkpoint(te2, sd, prefix=prefix)
    _load_strict_and_compare(te2, converted2)
    # OpenCLIP stores the projection as x @ P, i.e. the HF Linear weight transposed.
    assert torch.equal(sd[prefix + "text_projection"], te2.text_projection.weight.T)
    if family == "sdxl-refiner":
        assert "text_encoder" not in components
        assert _count(sd, "conditioner.embedders.1.") == 0 and _count(sd, cw.SDXL_TE1_PREFIX) == 0
        return
    te1 = components["text_encoder"]
    converted1 = convert_ldm_clip_checkpoint(sd)
    converted1.pop("text_model.embeddings.position_ids")
    _load_strict_and_compare(te1, _flatten_clip(converted1, te1))


@pytest.mark.parametrize("family", fx.FAMILIES)
def test_file_holds_exactly_the_modules_and_the_real_file_extras(written, family):
    components, sd, _ = written[family]
    arch = fx.spec(family).arch
    expected = len(components["unet"].state_dict()) + len(components["vae"].state_dict())
    if arch in ("sd1", "sd2"):
        expected += 12 + 2  # DDPM schedule buffers + model_ema.decay/num_updates
        assert sd["model_ema.num_updates"].dtype == torch.int32
        sigmas = ((1 - sd["alphas_cumprod"]) / sd["alphas_cumprod"]).sqrt()  # k-diffusion's SD sigma range
        assert sigmas[0].item() == pytest.approx(0.0292, abs=1e-4)
        assert sigmas[-1].item() == pytest.approx(14.6146, abs=1e-3)
    if arch in ("sd1", "sdxl"):
        expected += len(components["text_encoder"].state_dict()) + 1  # + position_ids
    if arch == "sd2":
        te = components["text_encoder"]
        layers = te.config.num_hidden_layers + fx.SD2_EXTRA_TEXT_LAYERS
        expected += 4 + 12 * layers + 2  # embeddings + ln_final, resblocks, text_projection + logit_scale
    if arch.startswith("sdxl"):
        expected += 4 + 12 * components["text_encoder_2"].config.num_hidden_layers + 2
    assert len(sd) == expected


def test_family_conventions_in_the_written_shapes(written):
    def shape(family, key):
        return tuple(written[family][1][key].shape)

    assert [shape(f, U + "input_blocks.0.0.weight")[1] for f in fx.FAMILIES] == [4, 9, 4, 4, 9, 5, 4, 4, 9]
    # SD1: 1x1 conv proj_in; SD2/SDXL: linear.
    assert len(shape("sd1", U + "input_blocks.1.1.proj_in.weight")) == 4
    assert len(shape("sd2", U + "input_blocks.1.1.proj_in.weight")) == 2
    assert len(shape("sdxl", U + "input_blocks.4.1.proj_in.weight")) == 2
    # SDXL: first level without attention, depth 2 on the second; label_emb = pooled + 6 (refiner 5) * 256.
    sdxl = written["sdxl"][1]
    assert _count(sdxl, U + "input_blocks.1.1.") == 0
    assert U + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in sdxl
    te1_width = shape("sdxl", cw.SDXL_TE1_PREFIX + "text_model.embeddings.position_embedding.weight")[1]
    te2_width = shape("sdxl", cw.SDXL_TE2_PREFIX + "positional_embedding")[1]
    assert te1_width != te2_width
    assert shape("sdxl", U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")[1] == te1_width + te2_width
    assert shape("sdxl", U + "label_emb.0.0.weight")[1] == te2_width + 6 * 256
    assert shape("sdxl-refiner", U + "label_emb.0.0.weight")[1] == te2_width + 5 * 256
    assert shape("sdxl-refiner", U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")[1] == te2_width
    # Real vocabulary, 77 positions, 64-dim text heads (width a multiple of 64).
    assert shape("sd1", "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") == (49408, 64)
    assert shape("sd2", cw.SD2_TE_PREFIX + "positional_embedding") == (77, 64)
    assert shape("sd2", cw.SD2_TE_PREFIX + "transformer.resblocks.0.attn.in_proj_weight") == (192, 64)
    # VAE: 4 latent channels (8 moments incl. logvar), attention stored as 1x1 conv, 8x downsampling.
    assert shape("sd1", "first_stage_model.encoder.conv_out.weight")[0] == 8
    assert shape("sd1", "first_stage_model.decoder.mid.attn_1.q.weight") == (64, 64, 1, 1)
    assert _count(written["sd1"][1], "first_stage_model.encoder.down.3.") > 0


def test_sd2_v_fixture_reads_as_v_prediction_to_a1111s_probe(written):
    # A1111 runs the UNet once on 0.5-filled inputs at t=999: (out - x).mean() < -1 means v-prediction.
    def probe(family):
        unet = written[family][0]["unet"]
        x = torch.full((1, 4, 8, 8), 0.5)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
        with torch.no_grad():
            out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
        return (out - x).mean().item()

    assert probe("sd2-v") < -1 < probe("sd2")


def test_write_checkpoint_fp16_and_determinism(tmp_path, written):
    # write_checkpoint(seed=3) rebuilds the same modules the `written` fixture saved in float32.
    components, sd32, _ = written["sd1"]
    path = fx.write_checkpoint(tmp_path / "half.safetensors", "sd1", seed=3, dtype=torch.float16)
    sd16 = load_file(path)
    assert sd16.keys() == sd32.keys()
    for key, value in sd16.items():
        if key.endswith("position_ids") or key == "model_ema.num_updates":
            assert value.dtype == sd32[key].dtype and torch.equal(value, sd32[key])
        else:
            assert value.dtype == torch.float16 and torch.equal(value, sd32[key].half()), key
    other = load_file(fx.write_checkpoint(tmp_path / "s4.safetensors", "sd1", seed=4))
    assert not torch.equal(other[U + "out.2.weight"], sd32[U + "out.2.weight"])
    assert os.path.getsize(path) < 12_000_000


def test_standalone_vae_file(tmp_path):
    path = fx.write_vae(tmp_path / "vae.safetensors", seed=5)
    sd = load_file(path)
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    vae = fx.build_vae(seed=5)
    _load_strict_and_compare(vae, convert_ldm_vae_checkpoint(sd, dict(vae.config)))


def test_save_single_file_is_atomic_and_keeps_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    shared = torch.arange(6.0)
    cw.save_single_file(path, {"a": shared, "b": shared, "c": shared.view(2, 3).T}, metadata={"k": "v"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}
        assert torch.equal(f.get_tensor("c"), shared.view(2, 3).T)
    before = path.read_bytes()
    with pytest.raises(Exception):
        cw.save_single_file(path, {"a": shared, "bad": "not a tensor"})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_unmapped_parameter_is_an_error():
    unet = UNet2DConditionModel(**fx.unet_config("sd1"))
    unet.register_parameter("surprise", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(cw.UnmappedKeyError):
        cw.unet_to_ldm(unet)


# ----------------------------------------------------------------------------- full size, on meta

def _meta_unet(**cfg) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**cfg)


def _meta_vae() -> AutoencoderKL:
    with torch.device("meta"):
        return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)


def _meta_clip(cls, hidden: int, layers: int, act: str, projection: int | None = None):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=hidden // 64, hidden_act=act,
                            max_position_embeddings=77, projection_dim=projection or hidden)
    with torch.device("meta"):
        return cls(config)


SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 layers_per_block=2)
SD2_UNET = dict(SD15_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128,
)
REFINER_UNET = dict(
    block_out_channels=(384, 768, 1536, 1536), layers_per_block=2, attention_head_dim=(6, 12, 24, 24),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4,
    cross_attention_dim=1280, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560, sample_size=128,
)


def _counts(sd: dict) -> tuple[int, int, int]:
    return _count(sd, U), _count(sd, cw.VAE_PREFIX), len(sd) - _count(sd, U) - _count(sd, cw.VAE_PREFIX)


def test_full_size_sd15_layout_on_meta():
    te = _meta_clip(CLIPTextModel, 768, 12, "quick_gelu")
    sd = cw.sd_to_ldm("sd1", _meta_unet(**SD15_UNET), _meta_vae(), te)
    assert len(sd) == 1130 and _counts(sd) == (686, 248, 196)
    assert sd[U + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd[U + "input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert sd[U + "input_blocks.4.1.proj_in.weight"].shape == (640, 640, 1, 1)
    assert sd[U + "output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
    assert sd[U + "output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)  # upsampler after no attention
    assert sd[U + "output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)  # upsampler after attention
    assert sd[U + "input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert sd[U + "middle_block.1.proj_out.weight"].shape == (1280, 1280, 1, 1)
    assert sd[U + "time_embed.2.weight"].shape == (1280, 1280)
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape == (77, 768)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert sd["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert sd["first_stage_model.decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in sd


def test_full_size_sd2_layout_on_meta():
    te = _meta_clip(CLIPTextModel, 1024, 23, "gelu", projection=512)
    sd = cw.sd_to_ldm("sd2", _meta_unet(**SD2_UNET), _meta_vae(), te, open_clip_extra_layers=1)
    assert len(sd) == 1228 and _counts(sd) == (686, 248, 294)
    p = cw.SD2_TE_PREFIX
    assert sd[p + "token_embedding.weight"].shape == (49408, 1024)
    assert sd[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3072, 1024)
    assert sd[p + "transformer.resblocks.23.mlp.c_fc.weight"].shape == (4096, 1024)
    assert p + "transformer.resblocks.24.ln_1.weight" not in sd
    assert sd[U + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 1024)
    assert sd[U + "input_blocks.4.1.proj_in.weight"].shape == (640, 640)


def test_full_size_sdxl_layouts_on_meta():
    te1 = _meta_clip(CLIPTextModel, 768, 12, "quick_gelu")
    te2 = _meta_clip(CLIPTextModelWithProjection, 1280, 32, "gelu")
    vae = _meta_vae()
    sd = cw.sd_to_ldm("sdxl", _meta_unet(**SDXL_UNET), vae, te1, te2)
    assert len(sd) == 2514 and _counts(sd) == (1680, 248, 196 + 390)
    assert sd[U + "label_emb.0.0.weight"].shape == (1280, 2816)
    assert sd[U + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"].shape == (640, 2048)
    assert sd[U + "middle_block.1.transformer_blocks.9.attn1.to_q.weight"].shape == (1280, 1280)
    assert U + "output_blocks.8.0.in_layers.0.weight" in sd and _count(sd, U + "output_blocks.9.") == 0
    assert _count(sd, U + "input_blocks.1.1.") == 0
    assert sd["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    assert sd["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias"].shape == (3840,)
    assert sd["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"].shape == (768,)

    refiner = cw.sd_to_ldm("sdxl-refiner", _meta_unet(**REFINER_UNET), vae, text_encoder_2=te2)
    assert len(refiner) == 1858 and _counts(refiner) == (1220, 248, 390)
    assert refiner[U + "input_blocks.0.0.weight"].shape == (384, 4, 3, 3)
    assert refiner[U + "label_emb.0.0.weight"].shape == (1536, 2560)
    assert _count(refiner, "conditioner.embedders.0.model.") == 390
