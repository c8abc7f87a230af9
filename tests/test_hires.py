"""Hires fix and the SDXL refiner on the fixture checkpoints: sizes, the two-pass infotext, checkpoint switches."""
from __future__ import annotations

import pytest
import torch

from conftest import small_params
from webui.engine import hires, upscalers
from webui.engine.errors import EngineError, InvalidParameterError
from webui.engine.infotext import parse_infotext
from webui.engine.refiner import completed_ratio
from webui.engine.sampling.discrete import DiscreteSchedule
from webui.engine.sampling.registry import (build_sigmas, default_sampler_registry, default_schedule_registry,
                                            resolve_sampler_and_schedule)


@pytest.fixture(scope="module")
def engine(checkpoints):
    checkpoints.path("sd1", name="sd1-other", seed=7)
    return checkpoints.engine("sd1", "sdxl", "sdxl-refiner")


@pytest.fixture
def sd1(engine):
    engine.load_checkpoint("sd1.safetensors")
    return engine


@pytest.fixture
def sdxl(engine):
    engine.load_checkpoint("sdxl.safetensors")
    return engine


def hr(**kw):
    values = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5, steps=3,
                  sampler_name="Euler")
    values.update(kw)
    return small_params(**values)


# ---- hires fix ---------------------------------------------------------------------------------------------

def test_hires_output_size_and_two_pass_infotext(sd1):
    steps = []
    result = sd1.txt2img(hr(), progress=lambda info: steps.append((info.step, info.total_steps)))
    assert result.images[0].size == (96, 96)
    info = parse_infotext(result.infotexts[0])
    assert (info["Size-1"], info["Size-2"]) == ("64", "64")       # the first pass's size, as A1111 writes it
    assert (info["Hires upscale"], info["Hires steps"], info["Hires upscaler"]) == ("1.5", "2", "Latent")
    assert info["Denoising strength"] == "0.5"
    assert steps[-1] == (5, 5)                                     # 3 first-pass steps + 2 hires steps
    assert result.info["denoising_strength"] == 0.5
    single = sd1.txt2img(small_params(steps=3, sampler_name="Euler"))
    assert single.images[0].size == (64, 64) and "Hires" not in single.infotexts[0]


@pytest.mark.parametrize("resize, size", [((80, 0), (80, 80)), ((0, 48), (48, 48)), ((96, 64), (96, 64))])
def test_hires_resize_to(sd1, resize, size):
    result = sd1.txt2img(hr(hr_resize_x=resize[0], hr_resize_y=resize[1], hr_second_pass_steps=1))
    assert result.images[0].size == size
    assert f"Hires resize: {resize[0]}x{resize[1]}" in result.infotexts[0]


def test_hires_target_sizes_follow_a1111():
    p = small_params(enable_hr=True, width=64, height=48, hr_resize_x=128, hr_resize_y=128)
    size = hires.target_size(p)
    assert (size.width, size.height, size.cover_width, size.cover_height) == (128, 128, 168, 128)
    assert hires.target_size(small_params(width=64, height=64, hr_scale=1.3)).width == 80   # 83.2 → a multiple of 8


def test_pixel_upscaler_and_hires_sampler(sd1):
    latent = sd1.txt2img(hr()).images[0]
    lanczos = sd1.txt2img(hr(hr_upscaler="Lanczos"))
    assert lanczos.images[0].size == (96, 96) and lanczos.images[0].tobytes() != latent.tobytes()
    assert "Hires upscaler: Lanczos" in lanczos.infotexts[0]
    other = sd1.txt2img(hr(hr_sampler_name="DPM++ 2M", hr_prompt="a blue square"))
    assert other.images[0].tobytes() != latent.tobytes()
    info = parse_infotext(other.infotexts[0])
    assert info["Hires sampler"] == "DPM++ 2M" and info["Hires prompt"] == "a blue square"


def test_second_pass_runs_the_tail_of_a_longer_schedule():
    samplers, schedules = default_sampler_registry(), default_schedule_registry()
    sampler, schedule = resolve_sampler_and_schedule(samplers, schedules, "Euler", "Automatic")
    model = DiscreteSchedule.for_sd()
    sigmas = hires.second_pass_sigmas(sampler, schedule, 4, 0.5, model, "cpu")
    full = build_sigmas(sampler, schedule, 8, model, "cpu")
    assert len(sigmas) == 5 and torch.equal(sigmas, full[-5:])


def test_hires_checkpoint_switches_and_comes_back(sd1):
    same = sd1.txt2img(hr())
    switched = sd1.txt2img(hr(hr_checkpoint_name="sd1-other"))
    assert switched.images[0].tobytes() != same.images[0].tobytes()
    assert parse_infotext(switched.infotexts[0])["Hires checkpoint"].startswith("sd1-other [")
    assert sd1.models.current.name == "sd1.safetensors"
    same_again = sd1.txt2img(hr(hr_checkpoint_name="Use same checkpoint"))
    assert same_again.images[0].tobytes() == same.images[0].tobytes()
    assert "Hires checkpoint" not in same_again.infotexts[0]


@pytest.mark.parametrize("change, field", [({"hr_upscaler": "ESRGAN_9x"}, "hr_upscaler"), ({"hr_scale": 9.0}, "hr_scale"),
                                           ({"denoising_strength": 1.5}, "denoising_strength"),
                                           ({"hr_second_pass_steps": -1}, "hr_second_pass_steps")])
def test_bad_hires_values_name_the_field(sd1, change, field):
    with pytest.raises(InvalidParameterError) as err:
        sd1.txt2img(hr(**change))
    assert err.value.field == field


def test_upscaler_names_are_a1111s():
    assert upscalers.canonical("latent (bicubic antialiased)") == "Latent (bicubic antialiased)"
    assert upscalers.canonical(None) == "Latent" and upscalers.canonical("nope") is None
    assert {"Latent", "Latent (nearest-exact)", "Lanczos", "Nearest", "None"} <= set(upscalers.names())


# ---- refiner -------------------------------------------------------------------------------------------------

def test_completed_ratio_is_by_noise_level():
    schedule = DiscreteSchedule.for_sd()
    assert completed_ratio(schedule.sigmas[-1:], schedule) == 0.0
    assert completed_ratio(schedule.sigmas[199:200], schedule) == 0.8
    assert completed_ratio(torch.tensor([0.03]), schedule) == 0.999


def test_refiner_switch_is_recorded_and_changes_the_image(sdxl):
    base = sdxl.txt2img(small_params(steps=4, sampler_name="Euler"))
    refined = sdxl.txt2img(small_params(steps=4, sampler_name="Euler", refiner_checkpoint="sdxl-refiner",
                                        refiner_switch_at=0.5))
    info = parse_infotext(refined.infotexts[0])
    assert info["Refiner"].startswith("sdxl-refiner [") and info["Refiner switch at"] == "0.5"
    assert refined.images[0].tobytes() != base.images[0].tobytes()
    assert sdxl.models.current.name == "sdxl.safetensors"
    never = sdxl.txt2img(small_params(steps=4, sampler_name="Euler", refiner_checkpoint="sdxl-refiner",
                                      refiner_switch_at=1.0))
    assert never.images[0].tobytes() == base.images[0].tobytes() and "Refiner" not in never.infotexts[0]


def test_refiner_each_batch_starts_on_the_base_model(sdxl):
    two = sdxl.txt2img(small_params(steps=3, sampler_name="Euler", refiner_checkpoint="sdxl-refiner",
                                    refiner_switch_at=0.5, n_iter=2, seed=10))
    one = sdxl.txt2img(small_params(steps=3, sampler_name="Euler", refiner_checkpoint="sdxl-refiner",
                                    refiner_switch_at=0.5, seed=11))
    assert two.images[1].tobytes() == one.images[0].tobytes()


def test_refiner_in_the_hires_pass(sdxl):
    result = sdxl.txt2img(hr(refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.3))
    assert result.images[0].size == (96, 96)
    assert "Refiner: sdxl-refiner [" in result.infotexts[0] and "Hires upscale: 1.5" in result.infotexts[0]


def test_refiner_with_incompatible_latents_is_refused(sd1):
    with pytest.raises(EngineError, match="cannot continue the latents"):
        sd1.txt2img(small_params(steps=2, refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.1))
    assert sd1.models.current.name == "sd1.safetensors"
    assert sd1.txt2img(small_params(steps=1)).images


def test_txt2img_form_maps_hires_and_refiner_fields():
    from webui.ui.fields import build_params

    form = {"prompt": "p", "negative_prompt": "", "sampler_name": "Euler", "scheduler": "Automatic", "steps": 4.0,
            "cfg_scale": 7, "width": 64, "height": 64, "n_iter": 1, "batch_size": 1, "seed": 1, "subseed": -1,
            "subseed_strength": 0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, "enable_hr": True,
            "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2.0, "hr_denoising_strength": 0.45, "hr_scale": 1.5,
            "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": "Use same checkpoint",
            "hr_sampler_name": "DPM++ 2M", "hr_prompt": "", "hr_negative_prompt": "blur",
            "refiner_checkpoint": "sdxl-refiner.safetensors", "refiner_switch_at": 0.7}
    p = build_params(form, 1)
    assert (p.enable_hr, p.hr_upscaler, p.hr_second_pass_steps, p.denoising_strength, p.hr_scale) == \
        (True, "Lanczos", 2, 0.45, 1.5)
    assert p.hr_checkpoint_name is None and p.hr_sampler_name == "DPM++ 2M" and p.hr_negative_prompt == "blur"
    assert (p.refiner_checkpoint, p.refiner_switch_at) == ("sdxl-refiner.safetensors", 0.7)
    off = build_params(form | {"enable_hr": False, "refiner_checkpoint": "None"}, 1)
    assert not off.enable_hr and off.refiner_checkpoint is None


def test_img2img_refiner_from_the_engine_and_the_form(sdxl):
    from PIL import Image

    from webui.ui.fields import IMG2IMG_FIELDS, build_params

    init = Image.new("RGB", (64, 64), (40, 90, 200))
    base = sdxl.img2img(small_params(steps=4, sampler_name="Euler", init_images=[init], denoising_strength=0.8))
    refined = sdxl.img2img(small_params(steps=4, sampler_name="Euler", init_images=[init], denoising_strength=0.8,
                                        refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.5))
    assert "Refiner: sdxl-refiner [" in refined.infotexts[0] and "Denoising strength: 0.8" in refined.infotexts[0]
    assert refined.images[0].tobytes() != base.images[0].tobytes()
    assert sdxl.models.current.name == "sdxl.safetensors"
    # the img2img tab carries the refiner controls too
    assert {"refiner_checkpoint", "refiner_switch_at"} <= set(IMG2IMG_FIELDS)
    form = {"prompt": "p", "negative_prompt": "", "sampler_name": "Euler", "scheduler": "Automatic", "steps": 4,
            "cfg_scale": 7, "width": 64, "height": 64, "n_iter": 1, "batch_size": 1, "seed": 1, "subseed": -1,
            "subseed_strength": 0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, "init_image": init,
            "denoising_strength": 0.6, "resize_mode": "Just resize", "refiner_checkpoint": "sdxl-refiner",
            "refiner_switch_at": 0.4}
    p = build_params(form, 1, img2img=True)
    assert (p.refiner_checkpoint, p.refiner_switch_at, p.denoising_strength) == ("sdxl-refiner", 0.4, 0.6)
