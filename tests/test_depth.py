"""depth2img on the SD2-depth fixture (5-channel UNet): uploaded maps, a DPT estimator folder, clear refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_params
from webui.engine import depth
from webui.engine.depth import NoDepthEstimator
from webui.engine.engine import Engine
from webui.engine.errors import InvalidParameterError
from webui.engine.paths import DataPaths


def picture(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype(np.uint8))


def gradient(angle: int = 0) -> Image.Image:
    return Image.linear_gradient("L").resize((64, 64)).rotate(angle)


def write_tiny_dpt(folder) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                           image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                           neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
        model = DPTForDepthEstimation(config).eval()
        with torch.no_grad():   # the library's small init gives a flat map; widen it so depth varies
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0, 0.3)
            model.head.head[-2].bias.fill_(1.0)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64},
                                                                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))


def make_engine(data_dir, checkpoint, with_estimator: bool) -> Engine:
    paths = DataPaths.create(data_dir)
    if with_estimator:
        write_tiny_dpt(paths.depth_dir / "tiny-dpt")
    engine = Engine(paths, device="cpu", extra_checkpoints=[checkpoint])
    engine.load_checkpoint(str(checkpoint))
    return engine


@pytest.fixture(scope="module")
def bare(checkpoints, tmp_path_factory):
    """The SD2-depth fixture with no depth estimator anywhere."""
    return make_engine(tmp_path_factory.mktemp("no-estimator"), checkpoints.path("sd2-depth"), False)


@pytest.fixture(scope="module")
def estimating(checkpoints, tmp_path_factory):
    return make_engine(tmp_path_factory.mktemp("with-estimator"), checkpoints.path("sd2-depth"), True)


def params(**kw):
    values = dict(init_images=[picture()], denoising_strength=0.8, steps=3, sampler_name="Euler")
    values.update(kw)
    return small_params(**values)


def test_normalize_to_latent_size_and_unit_range():
    d = depth.normalize(depth.image_to_depth(gradient()), 8, 8)
    assert d.shape == (1, 1, 8, 8)
    assert float(d.min()) == -1.0 and float(d.max()) == 1.0
    assert torch.all(d[0, 0, 1:, 0] >= d[0, 0, :-1, 0])          # keeps the gradient's direction
    assert torch.equal(depth.normalize(torch.full((1, 1, 16, 16), 3.0), 8, 8), torch.zeros(1, 1, 8, 8))
    sixteen = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    assert depth.image_to_depth(sixteen).max() == (64 * 64 - 1) * 16


def test_uploaded_depth_map_reaches_the_unet(bare):
    unet = bare.models.current.unet
    inputs = []
    handle = unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        a = bare.img2img(params(depth_map=gradient(0)))
    finally:
        handle.remove()
    channel = inputs[0][0, 4]
    assert inputs[0].shape[1] == 5
    assert torch.allclose(channel, depth.normalize(depth.image_to_depth(gradient(0)), 8, 8)[0, 0])
    b = bare.img2img(params(depth_map=gradient(90)))
    assert a.images[0].tobytes() != b.images[0].tobytes()
    shown = a.extra_images["depth"][0]
    assert shown.size == (64, 64) and shown.getextrema() == (0, 255)


def test_without_an_estimator_img2img_asks_for_a_depth_map(bare):
    with pytest.raises(NoDepthEstimator, match="upload a depth map"):
        bare.img2img(params())
    assert bare.depth.describe(bare.models.current) is None


def test_txt2img_uses_an_uploaded_map_and_otherwise_stays_flat(bare):
    flat = bare.txt2img(small_params(steps=2))
    mapped = bare.txt2img(small_params(steps=2, depth_map=gradient()))
    assert flat.images[0].tobytes() != mapped.images[0].tobytes()
    assert "depth" in mapped.extra_images and "depth" not in flat.extra_images


def test_depth_map_with_a_non_depth_model_is_refused(checkpoints, tmp_path):
    engine = Engine(DataPaths.create(tmp_path), device="cpu", extra_checkpoints=[checkpoints.path("sd1")])
    engine.load_checkpoint(str(checkpoints.path("sd1")))
    with pytest.raises(InvalidParameterError, match="not a depth model") as err:
        engine.img2img(params(depth_map=gradient()))
    assert err.value.field == "depth_map"


def test_estimator_folder_is_used_when_no_map_is_given(estimating):
    assert estimating.depth.describe(estimating.models.current) == "tiny-dpt"
    unet = estimating.models.current.unet
    inputs = []
    handle = unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        a = estimating.img2img(params(init_images=[picture(1)]))
    finally:
        handle.remove()
    channel = inputs[0][0, 4]
    assert float(channel.min()) == -1.0 and float(channel.max()) == 1.0       # estimated, not flat
    estimated = a.extra_images["depth"][0]
    other = estimating.img2img(params(init_images=[picture(1)], depth_map=gradient(45)))
    assert np.asarray(estimated).tobytes() != np.asarray(other.extra_images["depth"][0]).tobytes()
    assert a.images[0].tobytes() != other.images[0].tobytes()


# ---- the MiDaS model embedded in SD2-depth files ---------------------------------------------------------

# transformers DPT-Hybrid key → MiDaS key (timm vit_base_resnet50_384 inside `pretrained.model`, DPT in
# `scratch`), written independently of the engine's renames so the round trip checks them.
_TO_MIDAS = [
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.convolution\.", "pretrained.model.patch_embed.backbone.stem.conv."),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.norm\.", "pretrained.model.patch_embed.backbone.stem.norm."),
    (r"dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.",
     r"pretrained.model.patch_embed.backbone.stages.\1.blocks.\2."),
    (r"dpt\.embeddings\.projection\.", "pretrained.model.patch_embed.proj."),
    (r"dpt\.embeddings\.cls_token", "pretrained.model.cls_token"),
    (r"dpt\.embeddings\.position_embeddings", "pretrained.model.pos_embed"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_before\.", r"pretrained.model.blocks.\1.norm1."),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_after\.", r"pretrained.model.blocks.\1.norm2."),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"pretrained.model.blocks.\1.attn.proj."),
    (r"dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"pretrained.model.blocks.\1.mlp.fc1."),
    (r"dpt\.encoder\.layer\.(\d+)\.output\.dense\.", r"pretrained.model.blocks.\1.mlp.fc2."),
    (r"dpt\.layernorm\.", "pretrained.model.norm."),
    (r"neck\.reassemble_stage\.readout_projects\.2\.0\.", "pretrained.act_postprocess3.0.project.0."),
    (r"neck\.reassemble_stage\.readout_projects\.3\.0\.", "pretrained.act_postprocess4.0.project.0."),
    (r"neck\.reassemble_stage\.layers\.2\.projection\.", "pretrained.act_postprocess3.3."),
    (r"neck\.reassemble_stage\.layers\.3\.projection\.", "pretrained.act_postprocess4.3."),
    (r"neck\.reassemble_stage\.layers\.3\.resize\.", "pretrained.act_postprocess4.4."),
    (r"neck\.convs\.(\d)\.", lambda m: f"scratch.layer{int(m[1]) + 1}_rn."),
    (r"neck\.fusion_stage\.layers\.(\d)\.projection\.", lambda m: f"scratch.refinenet{4 - int(m[1])}.out_conv."),
    (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
     lambda m: f"scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (r"head\.head\.", "scratch.output_conv."),
]


def tiny_hybrid_dpt():
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    backbone = BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[128] * 3,
                         embedding_size=32, out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True)
    config = DPTConfig(is_hybrid=True, backbone_config=backbone, hidden_size=64, num_hidden_layers=12,
                       num_attention_heads=1, intermediate_size=128, image_size=64, patch_size=16,
                       backbone_out_indices=[0, 1, 8, 11], neck_hidden_sizes=[128, 128, 64, 64],
                       backbone_featmap_shape=[1, 128, 4, 4], neck_ignore_stages=[0, 1],
                       reassemble_factors=[1, 1, 1, 0.5], fusion_hidden_size=32, readout_type="project")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = DPTForDepthEstimation(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0, 0.1)
            model.head.head[-2].bias.fill_(1.0)
    return model


def to_midas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import re

    out, qkv = {}, {}
    for key, value in state.items():
        m = re.match(r"dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(\w+)$", key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _TO_MIDAS:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise AssertionError(f"no MiDaS name for {key}")
    for (layer, kind), parts in qkv.items():
        out[f"pretrained.model.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in ("query", "key", "value")])
    out["pretrained.model.head.weight"] = torch.zeros(10, 64)      # timm's classifier: present in files, unused
    return out


def test_embedded_midas_weights_are_used_as_the_estimator(checkpoints, tmp_path):
    from webui.engine import checkpoint_writer as cw
    from webui.engine import depth_embedded
    from webui.testing import fixtures

    reference = tiny_hybrid_dpt()
    midas = to_midas(reference.state_dict())
    state = fixtures.checkpoint_state_dict("sd2-depth", fixtures.build_components("sd2-depth"))
    state.update({depth_embedded.PREFIX + k: v for k, v in midas.items()})
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    path = cw.save_single_file(folder / "depth-midas.safetensors", state)
    engine = Engine(DataPaths.create(tmp_path), device="cpu")
    model = engine.load_checkpoint(str(path))
    assert model.extra["has_depth_model"]
    assert engine.depth.describe(model) == "depth-midas.safetensors (embedded MiDaS)"
    estimator = engine.depth.get(model)
    pixels = torch.stack([estimator._pixels(picture(2))])
    with torch.no_grad():
        expected = reference(pixel_values=pixels).predicted_depth
    assert float(expected.std()) > 1e-3                          # a real map, not a flat one
    assert torch.allclose(estimator([picture(2)], torch.device("cpu")), expected, atol=1e-5)
    result = engine.img2img(params(init_images=[picture(2)]))
    assert result.extra_images["depth"][0].getextrema() == (0, 255)


def test_depth_tab_status_messages():
    from webui.ui.edit_fields import depth_params, depth_status

    message, kind = depth_status(False, "SD 1.x", None, "/models/depth")
    assert kind == "error" and "not a depth model" in message
    message, kind = depth_status(True, "SD 2.x depth", None, "/models/depth")
    assert kind == "warning" and "upload a depth map" in message and "/models/depth" in message
    assert depth_status(True, "SD 2.x depth", "tiny-dpt", "/d") == (
        "Depth is estimated with tiny-dpt unless you upload a depth map.", "info")
    form = {"prompt": "p", "negative_prompt": "", "sampler_name": "Euler", "scheduler": "Automatic", "steps": 3,
            "cfg_scale": 7, "width": 64, "height": 64, "n_iter": 1, "batch_size": 1, "seed": 1,
            "denoising_strength": 0.5, "image": picture(), "depth_map": gradient(), "resize_mode": "Crop and resize"}
    p = depth_params(form, 1)
    assert p.depth_map is not None and p.resize_mode == 1 and p.init_images[0].mode == "RGB"
