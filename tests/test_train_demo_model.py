"""The demo model's training objective (loss weights, noise, terminal-step samples, learning rate) and a miniature run."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from webui.engine.engine import Engine

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
from shapes_dataset import Scene  # noqa: E402
from train_demo_model import (  # noqa: E402
    ATTRIBUTES, AttributeHeads, Config, anneal_config, build_text_encoder, build_unet, build_vae, caption_labels,
    cosine_factor, encode_dataset, foreground_masks, grow_unet, load_tokenizer, loss_weights, noised, object_masks,
    per_sample_loss, pyramid_noise, scale_latent_space, sd_alphas_cumprod, timesteps_and_weights)

AC = sd_alphas_cumprod().float()
SNR = AC / (1 - AC)


def test_min_snr_weights_and_x0_floor() -> None:
    w = loss_weights(SNR, floor=0.0, gamma=5.0)
    assert torch.allclose(w[SNR <= 5], torch.ones(int((SNR <= 5).sum())))  # epsilon loss untouched at high noise
    assert torch.allclose(w[SNR > 5], 5.0 / SNR[SNR > 5])
    floored = loss_weights(SNR, floor=0.5, gamma=5.0)
    assert torch.allclose((floored * SNR)[999], torch.tensor(0.5))  # x0-space weight held at the floor


def test_pyramid_noise_off_is_plain_white_noise_and_on_adds_low_frequencies() -> None:
    shape = (64, 4, 16, 16)
    white = pyramid_noise(shape, torch.Generator().manual_seed(3), 0.0)
    assert torch.equal(white, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    coloured = pyramid_noise(shape, torch.Generator().manual_seed(3), 0.8)
    assert abs(coloured.std().item() - 1.0) < 1e-4
    dc = lambda n: n.mean(dim=(2, 3)).std().item()  # noqa: E731 - spatial mean per sample and channel
    assert dc(coloured) > 3 * dc(white)


def test_default_recipe_draws_uniform_timesteps_only() -> None:
    weight = loss_weights(SNR, 0.0, 5.0)
    t, w, terminal = timesteps_and_weights(Config(), 32, torch.Generator().manual_seed(1), weight, SNR)
    assert terminal == 0
    assert torch.equal(t, torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(1)))
    assert torch.equal(w, weight[t])


def test_high_and_terminal_shares() -> None:
    cfg = Config(high_t_share=0.25, high_t_from=900, terminal_share=0.25)
    weight = loss_weights(SNR, 0.0, 5.0)
    t, w, terminal = timesteps_and_weights(cfg, 32, torch.Generator().manual_seed(1), weight, SNR)
    assert terminal == 8
    assert bool((t[:8] >= 900).all()) and bool((t[-8:] == 999).all())
    assert torch.allclose(w[:8] * SNR[t[:8]], torch.ones(8))  # x0-space weight 1 on both shares
    assert torch.allclose(w[-8:] * SNR[999], torch.ones(8))
    lighter = timesteps_and_weights(replace(cfg, terminal_x0_weight=0.25), 32, torch.Generator().manual_seed(1),
                                    weight, SNR)[1]
    assert torch.allclose(lighter[-8:] * SNR[999], torch.full((8,), 0.25))


def test_learning_rate_factor_constant_or_cosine_to_the_end_value() -> None:
    assert all(cosine_factor(s, 1000, 1.0) == 1.0 for s in (0, 400, 1000))  # phase 3's default: constant
    falling = [cosine_factor(s, 1000, 0.1) for s in range(0, 1001, 50)]
    assert falling[0] == 1.0 and abs(falling[10] - 0.55) < 1e-9 and abs(falling[-1] - 0.1) < 1e-9
    assert all(a > b for a, b in zip(falling, falling[1:]))


def test_terminal_samples_are_pure_noise_and_their_target_denoises_to_x0() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 999, 999])
    x_t, target = noised(x0, noise, t, AC, terminal=2)
    a, s = AC[t].sqrt()[:, None, None, None], (1 - AC[t]).sqrt()[:, None, None, None]
    assert torch.allclose(x_t[:2], (a * x0 + s * noise)[:2]) and torch.equal(target[:2], noise[:2])
    assert torch.allclose(x_t[2:], s[2:] * noise[2:])  # no trace of x0: what the sampler's first step sees
    assert torch.allclose(((x_t - s * target) / a)[2:], x0[2:], atol=1e-4)


def test_scaling_the_latent_space_is_exact_and_leaves_the_round_trip_alone() -> None:
    torch.manual_seed(0)
    vae = build_vae(Config(vae_channels=(32, 32, 32))).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        decoded = vae.decode(before.mode()).sample
        scaled = scale_latent_space(vae, before.mode(), 0.25)
        after = vae.encode(images).latent_dist
        assert torch.allclose(scaled, 0.25 * before.mode())
        assert torch.allclose(after.mode(), scaled, atol=1e-6)
        assert torch.allclose(after.std, 0.25 * before.std, rtol=1e-4)
        assert torch.allclose(vae.decode(after.mode()).sample, decoded, atol=1e-5)


def test_each_anneal_takes_its_rate_and_replays_or_draws_fresh_batches() -> None:
    cfg = Config(terminal_share=0.5, curriculum=500)
    assert cfg.anneal_lrs == (3e-4, 1e-4, 1e-4) and cfg.anneal_seed_offsets == (0, 0, 1000)
    anneals = [anneal_config(cfg, i) for i in (1, 2, 3)]
    assert [a.lr for a in anneals] == [3e-4, 1e-4, 1e-4] and anneals[0].unet_steps == cfg.anneal_steps
    assert anneals[0].terminal_share == 0 and anneals[0].curriculum == 0 and anneals[0].lr_end == 0
    assert [a.seed for a in anneals] == [cfg.seed, cfg.seed, cfg.seed + 1000]  # 3c and 3d replay phase 3's batches
    with pytest.raises(ValueError, match="one entry per anneal"):
        replace(cfg, anneal_lrs=(3e-4,))


def test_unet_attention_is_chosen_per_level() -> None:
    unet = build_unet(Config(unet_channels=(32, 32, 64), unet_attention=(0, 1, 0)))
    assert list(unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert list(unet.config.up_block_types) == ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    with pytest.raises(ValueError, match="one entry per level"):
        Config(unet_attention=(1, 1))


def test_a_unet_grows_attention_blocks_without_changing_its_output() -> None:
    small = Config(unet_channels=(32, 32, 64), unet_attention=(0, 1, 0))
    torch.manual_seed(0)
    unet = build_unet(small).eval()
    grown = grow_unet(replace(small, unet_attention=(1, 1, 0)), unet).eval()
    assert grown.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert len(grown.down_blocks[0].attentions) == 1 and len(grown.up_blocks[2].attentions) == 2
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.randn(2, 77, 64)
    with torch.no_grad():
        assert torch.equal(unet(x, t, context).sample, grown(x, t, context).sample)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_unet(replace(small, unet_attention=(0, 0, 0)), unet)  # that would drop blocks


def test_caption_labels_name_what_the_caption_states() -> None:
    one = Scene("red", "square", "large", "blue", ("top left",))
    assert list(ATTRIBUTES) == ["colour", "shape", "size", "position", "background", "count"]
    assert caption_labels(one, frozenset()) == [1, 2, 2, 1, 3, 1]  # 0 means "not stated"; values count from 1
    assert caption_labels(one, frozenset({"size", "background"})) == [1, 2, 0, 1, 0, 1]
    two = Scene("white", "triangle", "small", "black", ("top left", "bottom right"))
    assert caption_labels(two, frozenset()) == [7, 3, 1, 0, 8, 2]  # two objects: no position
    assert caption_labels(None, frozenset()) == [0] * 6  # the empty prompt


def test_attribute_heads_make_the_padding_states_tell_the_shape_words_apart() -> None:
    """The UNet's cross-attention looks mostly at the end-of-text/padding states; the heads' loss separates them."""
    torch.manual_seed(0)
    cfg = Config(text_layers=2)
    encoder, heads, tok = build_text_encoder(cfg), AttributeHeads(cfg.text_hidden), load_tokenizer()
    scenes = [Scene(c, s, "large", "white", ("center",)) for c in ("red", "blue") for s in ("circle", "square")]
    texts = [f"a large {sc.colour} {sc.shape} in the center on a white background" for sc in scenes]
    ids = tok(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    labels = torch.tensor([caption_labels(sc, frozenset()) for sc in scenes])

    def shape_gap() -> float:  # "circle" vs "square", same colour, in the mean padding state
        with torch.no_grad():
            pooled = heads.pooled(encoder(ids).last_hidden_state, ids)
        return (pooled[0] - pooled[1]).norm().item() / pooled[0].norm().item()

    before = shape_gap()
    opt = torch.optim.Adam(list(encoder.parameters()) + list(heads.parameters()), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = heads(encoder(ids).last_hidden_state, ids, labels)
        losses.append(loss.item())
        opt.zero_grad(), loss.backward(), opt.step()
    assert losses[-1] < 0.5 * losses[0]
    assert shape_gap() > 5 * before


def test_encoding_the_dataset_keeps_no_autograd_graph() -> None:
    """The encoder's weights require grad; a graph kept per chunk made the 12,000-image encode take 24 GB."""
    cfg = Config(vae_channels=(32, 32, 32), train_images=300)
    vae = build_vae(cfg).eval()
    latents, scenes = encode_dataset(cfg, vae, frozenset(), lambda msg: None)
    assert latents.shape == (300, 4, 16, 16) and len(scenes) == 300
    assert not latents.requires_grad and latents.grad_fn is None
    assert all(p.grad is None for p in vae.parameters())


def test_object_masks_cover_the_objects_and_a_one_pixel_ring() -> None:
    import numpy as np
    from shapes_dataset import COLOURS, ShapesSampler

    cfg = Config(train_images=300)
    sampler = ShapesSampler(cfg.seed + 200, 64, p_two=cfg.p_two)
    drawn = [sampler.batch(256), sampler.batch(44)]  # encode_dataset's draw, in its chunks of 256
    imgs, scenes = np.concatenate([d[0] for d in drawn]), drawn[0][2] + drawn[1][2]
    masks = object_masks(cfg, frozenset(), scenes, 4)
    assert masks.shape == (300, 16, 16) and set(masks.unique().tolist()) == {0.0, 1.0}
    for img, scene, mask in zip(imgs, scenes, masks):
        differs = np.abs(img.astype(int) - COLOURS[scene.background]).max(axis=-1) > 8
        blocks = torch.from_numpy(differs.reshape(16, 4, 16, 4).any(axis=(1, 3)))
        assert bool(mask[blocks].eq(1).all())  # every latent pixel an object touches
        ring = torch.nn.functional.max_pool2d(blocks[None, None].float(), 3, 1, 1)[0, 0].bool()
        assert torch.equal(mask.bool(), ring)  # and exactly one pixel around it
    assert 0.1 < masks.mean().item() < 0.5
    with pytest.raises(ValueError, match="latent cache"):
        object_masks(cfg, frozenset(), scenes[::-1], 4)


def test_foreground_weight_raises_the_objects_share_of_the_loss() -> None:
    pred, target = torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 16, 16)
    target[:, :, :4, :4] = 1.0  # the error sits on the object only
    masks = torch.zeros(2, 16, 16)
    masks[:, :4, :4] = 1
    plain = per_sample_loss(pred, target, None, 0.0)
    assert torch.allclose(plain, torch.full((2,), 16 / 256))
    assert torch.allclose(per_sample_loss(pred, target, masks, 0.0), plain)
    weighted = per_sample_loss(pred, target, masks, 9.0)
    assert torch.allclose(weighted, torch.full((2,), 16 * 10 / (16 * 10 + 240)))  # weighted mean of the errors
    late = foreground_masks(Config(foreground_max_t=500), masks, torch.tensor([499, 500]))
    assert torch.equal(late[0], masks[0]) and not late[1].any()  # no weight where the layout is still open
    assert torch.allclose(per_sample_loss(pred, target, late, 9.0), torch.stack([weighted[0], plain[1]]))


def test_training_program_end_to_end_with_the_finish_and_anneals(tmp_path: Path) -> None:
    """A miniature run of every phase writes an SD1 single file; phases 3b, 3c and 3d each move the weights on."""
    from safetensors.torch import load_file

    out = tmp_path / "mini.safetensors"
    latent_std = 0.5
    tiny = ["--vae-channels", "32,32,32", "--unet-channels", "32,32,32", "--vae-steps", "2", "--vae-batch", "2",
            "--decoder-steps", "1", "--polish-steps", "1", "--colour-steps", "1", "--train-images", "40",
            "--unet-steps", "2", "--batch", "4", "--finish-steps", "2", "--finish-terminal-share", "0.5",
            "--checkpoint-every", "1", "--anneal-steps", "2", "--anneal-lrs", "3e-4,1e-4",
            "--anneal-seed-offsets", "0,7", "--foreground-weight", "3", "--foreground-max-t", "600",
            "--latent-std", str(latent_std), "--unet-attention", "0,1,0", "--text-aux-weight", "0.05",
            "--threads", "1"]
    # a subprocess: the program sets process-wide torch state (threads, deterministic algorithms)
    subprocess.run([sys.executable, str(TOOLS / "train_demo_model.py"), "--work-dir", str(tmp_path / "run"),
                    "--out", str(out), *tiny], check=True, capture_output=True, timeout=300)
    run = tmp_path / "run"
    assert (run / "step00002").is_dir() and (run / "finish_step00002").is_dir()
    before = load_file(run / "step00002" / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(run / "finish_step00002" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    annealed = [load_file(run / f"anneal{i}_step00002" / "unet" / "diffusion_pytorch_model.safetensors")
                for i in (1, 2)]
    assert any(not torch.equal(after[k], annealed[0][k]) for k in after)  # phase 3c moves them on again
    assert any(not torch.equal(annealed[0][k], annealed[1][k]) for k in after)  # and so does phase 3d
    assert not (run / "anneal3_step00002").exists()  # one anneal per rate
    final = load_file(run / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(annealed[1][k], final[k]) for k in final)  # the exported weights: the last anneal's
    weights = "diffusion_pytorch_model.safetensors"  # phases 2b/2c change the decoder only, and final/ has it
    folded, polished = load_file(run / "vae_folded" / weights), load_file(run / "vae_polished" / weights)
    exported = load_file(run / "final" / "vae" / weights)
    # after the decoder rounds the latent space is scaled to --latent-std: only the quant convs change
    same = [k for k in polished if not k.startswith(("quant_conv.", "post_quant_conv."))]
    assert all(torch.equal(polished[k], exported[k]) for k in same)
    assert torch.allclose(exported["quant_conv.weight"][:4], latent_std * polished["quant_conv.weight"][:4])
    assert torch.allclose(exported["post_quant_conv.weight"], polished["post_quant_conv.weight"] / latent_std)
    assert all(torch.equal(folded[k], polished[k]) for k in folded if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(folded[k], polished[k]) for k in folded if k.startswith("decoder."))
    state = load_file(out)
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "cond_stage_model"}
    assert all(v.dtype == torch.float16 for v in state.values())
    # attention at the second level only (and the middle): the engine reads that layout from the keys
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in state
    assert "model.diffusion_model.input_blocks.3.1.proj_in.weight" in state
    unet = Engine(device="cpu").load_checkpoint(out).unet
    assert list(unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]


def test_layout_oracle_reads_corners_at_low_noise_and_nothing_once_the_latents_are_tiny() -> None:
    from demo_layout_oracle import oracle_accuracy

    x0 = torch.zeros(200, 4, 16, 16)
    x0[:, :, 1:7, 1:7] = torch.randn(200, 4, 1, 1, generator=torch.Generator().manual_seed(1)).sign() * 2
    gen = torch.Generator().manual_seed(0)
    assert oracle_accuracy(x0, 300, 1.0, 0.3, gen) == 1.0
    assert oracle_accuracy(x0, 999, 1.0, 0.3, gen) > 0.6  # SD1's last step still shows a large object's corner
    assert oracle_accuracy(x0, 999, 0.01, 0.3, gen) < 0.4  # chance is 0.25
