"""txt2img/img2img behaviour on the SD1 fixture: seeds, batches, infotext, samplers, guidance, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_params
from webui.engine import image_ops
from webui.engine.conditioning import Conditioning
from webui.engine.denoiser import CFGDenoiser
from webui.engine.errors import InvalidParameterError
from webui.engine.infotext import parse_infotext, read_image_infotext, save_image_with_infotext
from webui.engine.params import GenerationParams
from webui.engine.processing import JobControl, img2img_sigmas
from webui.engine.rng import ImageRNG
from webui.engine.sampling.registry import UnknownSamplerError


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_parameters_same_pixels(sd1_engine):
    a = sd1_engine.txt2img(small_params())
    b = sd1_engine.txt2img(small_params())
    assert a.images[0].tobytes() == b.images[0].tobytes()
    c = sd1_engine.txt2img(small_params(seed=4321))
    assert a.images[0].tobytes() != c.images[0].tobytes()


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "Euler"])
def test_batch_image_i_equals_single_image_with_seed_plus_i(sd1_engine, sampler):
    batch = sd1_engine.txt2img(small_params(batch_size=3, seed=100, sampler_name=sampler))
    assert batch.seeds == [100, 101, 102]
    for i in range(3):
        single = sd1_engine.txt2img(small_params(batch_size=1, seed=100 + i, sampler_name=sampler))
        assert np.abs(_px(single.images[0]) - _px(batch.images[i])).max() <= 1, (sampler, i)
        assert f"Seed: {100 + i}," in batch.infotexts[i]


def test_batch_count_continues_seeds(sd1_engine):
    result = sd1_engine.txt2img(small_params(batch_size=2, n_iter=2, seed=7, steps=2))
    assert result.seeds == [7, 8, 9, 10] and len(result.images) == 4
    assert result.info["all_seeds"] == [7, 8, 9, 10]


def test_random_seed_is_recorded(sd1_engine):
    result = sd1_engine.txt2img(small_params(seed=-1, steps=2))
    seed = result.seeds[0]
    assert 0 <= seed < 2**32 and f"Seed: {seed}," in result.infotexts[0]
    again = sd1_engine.txt2img(small_params(seed=seed, steps=2))
    assert again.images[0].tobytes() == result.images[0].tobytes()


def test_variation_seed_strength_endpoints(sd1_engine):
    base = sd1_engine.txt2img(small_params(seed=1, subseed=2, subseed_strength=0.0, sampler_name="Euler"))
    plain = sd1_engine.txt2img(small_params(seed=1, sampler_name="Euler"))
    assert base.images[0].tobytes() == plain.images[0].tobytes()
    full = sd1_engine.txt2img(small_params(seed=1, subseed=2, subseed_strength=1.0, sampler_name="Euler"))
    other = sd1_engine.txt2img(small_params(seed=2, sampler_name="Euler"))
    assert np.abs(_px(full.images[0]) - _px(other.images[0])).max() <= 2
    half = sd1_engine.txt2img(small_params(seed=1, subseed=2, subseed_strength=0.5, sampler_name="Euler"))
    assert "Variation seed: 2, Variation seed strength: 0.5" in half.infotexts[0]
    assert half.images[0].tobytes() not in (plain.images[0].tobytes(), other.images[0].tobytes())


def test_resize_seed_from_keeps_the_centre_of_the_smaller_noise():
    small = ImageRNG((4, 4, 4), [9]).first()
    big = ImageRNG((4, 8, 8), [9], seed_resize_from=(32, 32)).first()
    assert torch.equal(big[0, :, 2:6, 2:6], small[0])
    crop = ImageRNG((4, 2, 2), [9], seed_resize_from=(32, 32)).first()
    assert torch.equal(crop[0], small[0, :, 1:3, 1:3])
    # a VAE that downsamples ×4 (the demo model's) reads "from 16×16" as a 4×4 latent
    x4 = ImageRNG((4, 8, 8), [9], seed_resize_from=(16, 16), latent_scale=4).first()
    assert torch.equal(x4[0, :, 2:6, 2:6], small[0])


def test_infotext_round_trip_regenerates_identical_pixels(sd1_engine, tmp_path):
    params = small_params(prompt="a large red circle, top left: (sharp)", negative_prompt="blurry, dark",
                          sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=6.5, seed=31337, steps=5,
                          subseed=5, subseed_strength=0.25)
    first = sd1_engine.txt2img(params)
    path = tmp_path / "out.png"
    save_image_with_infotext(first.images[0], path, first.infotexts[0])
    with Image.open(path) as im:
        text = read_image_infotext(im)
    parsed = parse_infotext(text)
    again = GenerationParams(
        prompt=parsed["Prompt"], negative_prompt=parsed["Negative prompt"], steps=int(parsed["Steps"]),
        sampler_name=parsed["Sampler"], scheduler=parsed["Schedule type"], cfg_scale=float(parsed["CFG scale"]),
        seed=int(parsed["Seed"]), width=int(parsed["Size-1"]), height=int(parsed["Size-2"]),
        subseed=int(parsed["Variation seed"]), subseed_strength=float(parsed["Variation seed strength"]))
    second = sd1_engine.txt2img(again)
    with Image.open(path) as im:
        assert second.images[0].tobytes() == im.convert("RGB").tobytes()
    assert second.infotexts[0] == first.infotexts[0]


def test_infotext_uses_a1111_keys_and_order(sd1_engine):
    text = sd1_engine.txt2img(small_params(negative_prompt="ugly", clip_skip=2, steps=2)).infotexts[0]
    lines = text.split("\n")
    assert lines[0] == "a red circle" and lines[1] == "Negative prompt: ugly"
    keys = [part.split(":")[0].strip() for part in lines[2].split(", ")]
    assert keys[:6] == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size"]
    assert keys.index("Model hash") < keys.index("Model") < keys.index("Clip skip") < keys.index("Version")


def test_every_sampler_runs(sd1_engine):
    names = sd1_engine.samplers.names()
    assert {"Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
            "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart",
            "DDIM", "PLMS", "UniPC", "LCM"} <= set(names)
    for name in names:
        result = sd1_engine.txt2img(small_params(sampler_name=name, steps=3, cfg_scale=3.0))
        arr = _px(result.images[0])
        assert arr.shape == (64, 64, 3) and arr.std() > 0, name
        assert f"Sampler: {name}," in result.infotexts[0]


def test_every_schedule_type_runs(sd1_engine):
    for label in sd1_engine.schedules.labels():
        result = sd1_engine.txt2img(small_params(sampler_name="Euler", scheduler=label, steps=3))
        assert result.images[0].size == (64, 64), label


def test_combined_sampler_name_is_accepted(sd1_engine):
    a = sd1_engine.txt2img(small_params(sampler_name="DPM++ 2M Karras", steps=3))
    b = sd1_engine.txt2img(small_params(sampler_name="DPM++ 2M", scheduler="Karras", steps=3))
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in a.infotexts[0]


def test_cfg_formula_is_a1111s():
    """denoised = uncond + s·(cond − uncond) for any s, including 0 and values below 1."""
    def inner(x, sigma, context, added=None, extra=None):
        return x + context[:, :1, :1].reshape(-1, 1, 1, 1)

    cond = Conditioning(torch.full((1, 2, 3), 2.0))
    uncond = Conditioning(torch.full((1, 2, 3), -1.0))
    x, sigma = torch.zeros(1, 4, 2, 2), torch.ones(1)
    for scale in (0.0, 0.5, 1.0, 7.0):
        out = CFGDenoiser(inner, cond, uncond, scale)(x, sigma)
        assert torch.allclose(out, torch.full_like(x, -1.0 + scale * 3.0)), scale


def test_cfg_zero_ignores_prompt(sd1_engine):
    a = sd1_engine.txt2img(small_params(prompt="a red circle", cfg_scale=0.0, steps=3))
    b = sd1_engine.txt2img(small_params(prompt="a blue square", cfg_scale=0.0, steps=3))
    assert a.images[0].tobytes() == b.images[0].tobytes()
    c = sd1_engine.txt2img(small_params(prompt="a blue square", cfg_scale=7.0, steps=3))
    assert c.images[0].tobytes() != b.images[0].tobytes()


def test_interrupt_returns_what_finished(sd1_engine):
    control = JobControl()
    seen = []

    def progress(info):
        seen.append(info.step)
        if info.step == 2:
            control.interrupted = True

    result = sd1_engine.txt2img(small_params(steps=10, n_iter=3), control=control, progress=progress)
    assert result.interrupted and len(result.images) == 1
    assert seen == [1, 2]


def test_skip_moves_to_next_batch(sd1_engine):
    control = JobControl()

    def progress(info):
        if info.batch_index == 0 and info.step == 1:
            control.skipped = True

    result = sd1_engine.txt2img(small_params(steps=4, n_iter=2), control=control, progress=progress)
    assert not result.interrupted and len(result.images) == 2


def test_progress_reports_every_step(sd1_engine):
    steps = []
    sd1_engine.txt2img(small_params(steps=5, n_iter=2, sampler_name="Euler"), progress=lambda i: steps.append((i.step, i.total_steps)))
    assert steps == [(i, 10) for i in range(1, 11)]


@pytest.mark.parametrize("field,value,message", [
    ("width", 65, "multiple of 8"), ("height", 0, "between"), ("steps", 0, "between"),
    ("cfg_scale", float("nan"), "number"), ("batch_size", "2", "whole number"), ("seed", -5, "random"),
    ("clip_skip", 13, "between"), ("subseed_strength", 1.5, "between"),
])
def test_bad_parameters_name_the_field(sd1_engine, field, value, message):
    with pytest.raises(InvalidParameterError) as err:
        sd1_engine.txt2img(small_params(**{field: value}))
    assert err.value.field == field and message in str(err.value)


def test_unknown_sampler_lists_valid_names(sd1_engine):
    with pytest.raises(UnknownSamplerError) as err:
        sd1_engine.txt2img(small_params(sampler_name="Euler b"))
    assert "Euler a" in str(err.value) and "DPM++ 2M" in str(err.value)


def test_img2img_denoising_strength_controls_change(sd1_engine):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    init.paste((30, 30, 200), (0, 0, 32, 32))
    def run(strength):
        p = small_params(init_images=[init], denoising_strength=strength, steps=10, sampler_name="Euler")
        return _px(sd1_engine.img2img(p).images[0]).astype(np.float32)
    target = _px(init).astype(np.float32)
    low, high = run(0.05), run(1.0)
    assert np.mean((low - target) ** 2) < np.mean((high - target) ** 2)
    result = sd1_engine.img2img(small_params(init_images=[init], denoising_strength=0.3, steps=4))
    assert "Denoising strength: 0.3" in result.infotexts[0]
    with pytest.raises(InvalidParameterError, match="init_images"):
        sd1_engine.img2img(small_params())


def test_img2img_step_arithmetic_matches_a1111():
    sigmas = torch.linspace(10, 0, 21)
    assert len(img2img_sigmas(sigmas, 20, 0.75)) == 17          # t_enc = 15 → 16 steps
    assert len(img2img_sigmas(sigmas, 20, 1.0)) == 21           # min(strength, 0.999) → all 20 steps
    assert torch.equal(img2img_sigmas(sigmas, 20, 0.0), sigmas[19:])


def test_resize_modes():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 10, 100))           # blue stripe on the far left
    just = image_ops.resize_image(0, wide, 64, 64)
    assert just.size == (64, 64) and just.getpixel((1, 32))[2] > 200
    crop = image_ops.resize_image(1, wide, 64, 64)
    assert crop.size == (64, 64) and crop.getpixel((1, 32))[0] > 200   # left stripe cropped away
    fill = image_ops.resize_image(2, wide, 64, 64)
    assert fill.size == (64, 64)
    assert fill.getpixel((32, 1)) == fill.getpixel((32, 17))             # top band stretched from the edge row


def test_clip_skip_changes_conditioning_and_is_recorded(sd1_engine):
    one = sd1_engine.txt2img(small_params(clip_skip=1, steps=2))
    two = sd1_engine.txt2img(small_params(clip_skip=2, steps=2))
    assert one.images[0].tobytes() != two.images[0].tobytes()
    assert "Clip skip: 2" in two.infotexts[0] and "Clip skip" not in one.infotexts[0]


def test_long_prompts_are_chunked_not_truncated(sd1_engine):
    encoder = sd1_engine.models.current.prompt_encoder
    long_prompt = ", ".join(["red circle"] * 60)
    cond = encoder.encode([(long_prompt, 1.0)])
    assert cond.context.shape[1] == 77 * encoder.chunk_count([(long_prompt, 1.0)]) and cond.context.shape[1] >= 154
    changed = encoder.encode([(long_prompt + ", blue", 1.0)])
    assert not torch.equal(cond.context, changed.context)
    pos, neg = encoder.encode_pair([(long_prompt, 1.0)], [("", 1.0)])
    assert pos.context.shape == neg.context.shape


def test_token_weights_scale_embeddings_and_keep_the_mean(sd1_engine):
    encoder = sd1_engine.models.current.prompt_encoder
    plain = encoder.encode([("a red circle", 1.0)]).context
    weighted = encoder.encode([("a red ", 1.0), ("circle", 1.5)]).context
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-5)
    assert not torch.allclose(plain, weighted)


def test_vae_nan_in_reduced_precision_is_redone_in_fp32(sd1_engine, caplog):
    """A GPU fp16 VAE can overflow to NaN; the decode is redone in fp32 and the log says so."""
    from webui.engine.processing import decode_latents

    model = sd1_engine.models.current
    vae = model.vae
    real_decode = vae.decode

    def flaky_decode(z, *a, **kw):
        out = real_decode(z.to(vae.dtype), *a, **kw)
        if vae.dtype != torch.float32:
            out.sample = torch.full_like(out.sample, float("nan"))
        return out

    latents = torch.randn(1, 4, 8, 8)
    saved = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.to(torch.bfloat16).to(torch.float32)       # weights now exactly representable in bf16
    expected = decode_latents(model, latents)
    vae.to(torch.bfloat16)
    vae.decode = flaky_decode
    try:
        with caplog.at_level("WARNING"):
            out = decode_latents(model, latents)
    finally:
        del vae.decode
        vae.to(torch.float32)
        vae.load_state_dict(saved)
    assert torch.isfinite(out).all() and torch.allclose(out, expected, atol=1e-5)
    assert "redoing it in fp32" in caplog.text


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt"])
def test_text_that_is_not_valid_unicode_is_refused_with_its_field(field):
    from webui.engine.errors import InvalidParameterError

    p = small_params(**{field: "a cat \ud800"})   # a lone surrogate, as JSON "\\ud800" decodes
    with pytest.raises(InvalidParameterError) as err:
        p.validate()
    assert err.value.field == field and "Unicode" in str(err.value)
