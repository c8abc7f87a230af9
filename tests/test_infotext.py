import pytest
from PIL import Image

from webui.engine import infotext as it
from webui.engine.infotext import (
    PARSE_DEFAULTS, create_infotext, format_params, generation_params, parse_infotext,
    read_image_infotext, save_image_with_infotext,
)

# The example of /work/shared/reference/a1111.md section 3 (SDXL, hires fix, one LoRA).
A1111_EXAMPLE = (
    "photo of a red fox in the snow, (detailed fur:1.2), <lora:add_detail:0.6>\n"
    "Negative prompt: blurry, lowres, watermark\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
    "Denoising strength: 0.35, Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


def example_params() -> dict:
    fixed = {
        # deliberately not in A1111 order: generation_params must reorder
        "Size": (832, 1216), "Seed": 3141592653, "Steps": 25, "Sampler": "DPM++ 2M", "Schedule type": "Karras",
        "CFG scale": 6.5, "Model hash": "31e35c80fc", "Model": "sd_xl_base_1.0", "VAE hash": "235745af8d",
        "VAE": "sdxl_vae.safetensors", "Clip skip": 2, "RNG": "GPU", "Tiling": False, "Image CFG scale": None,
    }
    extra = {  # as A1111's extra_generation_params: Denoising strength also lives here but keeps its fixed slot
        "Hires upscale": 1.5, "Hires steps": 10, "Denoising strength": 0.35, "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54",
    }
    return generation_params(fixed, extra, {"Version": "v1.10.1"})


def test_create_matches_a1111_example_exactly():
    text = create_infotext(
        "photo of a red fox in the snow, (detailed fur:1.2), <lora:add_detail:0.6>",
        "blurry, lowres, watermark",
        example_params(),
    )
    assert text == A1111_EXAMPLE


def test_parse_a1111_example():
    res = parse_infotext(A1111_EXAMPLE)
    assert res["Prompt"] == "photo of a red fox in the snow, (detailed fur:1.2), <lora:add_detail:0.6>"
    assert res["Negative prompt"] == "blurry, lowres, watermark"
    assert res["Steps"] == "25"
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert res["CFG scale"] == "6.5"
    assert res["Seed"] == "3141592653"
    assert (res["Size-1"], res["Size-2"]) == ("832", "1216")
    assert "Size" not in res
    assert res["Clip skip"] == "2"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert res["Hires upscaler"] == "R-ESRGAN 4x+"
    assert res["Version"] == "v1.10.1"
    assert "Downcast alphas_cumprod" not in res  # v1.10.1 is newer than every backcompat threshold


def test_generation_params_order_and_a1111_conditions():
    params = generation_params(
        {"Seed": 1, "Steps": 20, "Clip skip": 1, "RNG": "CPU", "Tiling": True, "Seed resize from": [640, 480]},
        {"Eta": 0.5, "Version": "v1.10.1", "Hires steps": 4},
    )
    assert list(params) == ["Steps", "Seed", "Seed resize from", "RNG", "Tiling", "Eta", "Hires steps", "Version"]
    assert params["Seed resize from"] == "640x480"
    assert params["Tiling"] == "True"
    assert format_params(params) == (
        "Steps: 20, Seed: 1, Seed resize from: 640x480, RNG: CPU, Tiling: True, Eta: 0.5, Hires steps: 4, "
        "Version: v1.10.1"
    )


def test_generation_params_rejects_unknown_fixed_key():
    with pytest.raises(ValueError, match="Hires steps"):
        generation_params({"Steps": 20, "Hires steps": 4})


def test_format_params_drops_none_and_writes_key_equal_value_alone():
    params = {"Steps": 20, "Foo": "Foo", "Bar": None, "CFG scale": 7.0}
    assert format_params(params) == "Steps: 20, Foo, CFG scale: 7.0"


@pytest.mark.parametrize("value, written", [
    ("plain value", "plain value"),
    ("a, b", '"a, b"'),
    ("a: b", '"a: b"'),
    ("line1\nline2", '"line1\\nline2"'),
    ('say "hi", ok', '"say \\"hi\\", ok"'),
    ("日本語, ü", '"日本語, ü"'),  # ensure_ascii=False
    (7, "7"),
])
def test_quoting(value, written):
    assert format_params({"Key": value}) == f"Key: {written}"


ROUND_TRIPS = [
    ("a cat", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7}),
    ("a cat, sitting: on a mat", "ugly, blurry", {"Steps": 20, "Sampler": "Euler a", "Seed": 42}),
    ('the "quoted" word', "no \"quotes\" please", {"Steps": 1, "Sampler": "DDIM", "Note": 'x, "y": z'}),
    ("first line\nsecond line, with comma\nthird: colon", "neg line 1\nneg line 2",
     {"Steps": 30, "Sampler": "DPM++ 2M", "CFG scale": 5.5}),
    ("日本の猫, 🐱", "ünïcödé", {"Steps": 8, "Sampler": "LCM", "Model": "模型", "Comment": "多,行\n文本"}),
    ("", "", {"Steps": 20, "Sampler": "Euler", "Seed": 7}),
    ("(masterpiece:1.2), [a:b:0.5]", "", {"Steps": 20, "Sampler": "Euler", "Lora hashes": "a: 1, b: 2"}),
]


@pytest.mark.parametrize("prompt, negative, params", ROUND_TRIPS)
def test_round_trip(prompt, negative, params):
    text = create_infotext(prompt, negative, params)
    if not negative:
        assert "Negative prompt:" not in text
    res = parse_infotext(text, fill_defaults=False)
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    assert {k: v for k, v in res.items() if k not in ("Prompt", "Negative prompt")} == \
        {k: str(v) for k, v in params.items()}


def test_last_line_needs_three_matches_to_be_params():
    res = parse_infotext("a cat\nSteps: 20, Sampler: Euler", fill_defaults=False)
    assert res == {"Prompt": "a cat\nSteps: 20, Sampler: Euler", "Negative prompt": ""}
    res = parse_infotext("a cat\nSteps: 20, Sampler: Euler, Seed: 3", fill_defaults=False)
    assert res == {"Prompt": "a cat", "Negative prompt": "", "Steps": "20", "Sampler": "Euler", "Seed": "3"}


def test_negative_prompt_without_params_line():
    res = parse_infotext("cat\nNegative prompt: dog\nmore dog", fill_defaults=False)
    assert res == {"Prompt": "cat", "Negative prompt": "dog\nmore dog"}


def test_size_values_split_into_key_1_and_key_2():
    res = parse_infotext("x\nSteps: 2, Size: 512x768, Hires resize: 1024x1536, Seed resize from: -1x-1")
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert (res["Hires resize-1"], res["Hires resize-2"]) == ("1024", "1536")
    assert res["Seed resize from"] == "-1x-1"  # not \d+x\d+, stays whole


def test_empty_value_is_dropped_like_a1111():
    res = parse_infotext("x\nSteps: 20, Sampler: , CFG scale: 7, Seed: 1", fill_defaults=False)
    assert "Sampler" not in res
    assert res["CFG scale"] == "7"


def test_default_filling():
    res = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1")
    for key, value in PARSE_DEFAULTS.items():
        assert res[key] == value, key
    assert res["Clip skip"] == "1" and res["RNG"] == "GPU" and res["Schedule type"] == "Automatic"
    assert res["Masked area padding"] == 32
    assert "Cache FP16 weight for LoRA" not in res  # only when FP8 weight is not Disable


def test_defaults_do_not_override_given_values():
    res = parse_infotext("x\nSteps: 20, Clip skip: 2, RNG: CPU, Schedule type: Karras, FP8 weight: Enable for SDXL")
    assert res["Clip skip"] == "2" and res["RNG"] == "CPU" and res["Schedule type"] == "Karras"
    assert res["Cache FP16 weight for LoRA"] is False


def test_old_hires_fix_first_pass_size():
    res = parse_infotext("x\nSteps: 20, Size: 1024x1024, First pass size: 0x0")
    assert (res["Size-1"], res["Size-2"]) == (512, 512)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 1024)


def test_version_backcompat_flags():
    res = parse_infotext("[a:b:3]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.1")
    assert res["Old prompt editing timelines"] is True
    assert res["Pad conds v0"] is True
    assert res["Downcast alphas_cumprod"] is True
    res = parse_infotext("x\nSteps: 20, Sampler: Euler, Refiner: m, Version: v1.7.0")
    assert res["Downcast alphas_cumprod"] is True and res["Refiner switch by sampling steps"] is True
    res = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Version: v1.8.0")
    assert "Downcast alphas_cumprod" not in res


def test_hypernet_is_appended_to_prompt():
    res = parse_infotext("cat\nSteps: 20, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "cat<hypernet:anime:0.5>"


def test_quoted_value_json_decoded():
    res = parse_infotext('x\nSteps: 20, Lora hashes: "a: 1, b: 2", Note: "tab\\there \\"q\\""', fill_defaults=False)
    assert res["Lora hashes"] == "a: 1, b: 2"
    assert res["Note"] == 'tab\there "q"'


def _png_chunk_types(path):
    data = path.read_bytes()
    return {t for t in (b"tEXt", b"iTXt", b"zTXt") if t + b"parameters" in data}


@pytest.mark.parametrize("text, chunk", [
    (A1111_EXAMPLE, b"tEXt"),
    ("日本の猫\nNegative prompt: 🐱\nSteps: 2, Sampler: Euler, Seed: 5", b"iTXt"),
])
def test_png_chunk_round_trip_on_disk(tmp_path, text, chunk):
    img = Image.new("RGB", (8, 6), (200, 10, 30))
    path = tmp_path / "out.png"
    save_image_with_infotext(img, path, text)
    assert _png_chunk_types(path) == {chunk}
    with Image.open(path) as loaded:
        assert read_image_infotext(loaded) == text
        assert loaded.getpixel((3, 3)) == (200, 10, 30)
    assert parse_infotext(read_image_infotext(Image.open(path)))["Prompt"] == text.split("\n")[0]


@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_exif_user_comment_round_trip(tmp_path, ext):
    text = 'çà, "x"\nNegative prompt: 猫\nSteps: 2, Sampler: Euler, Seed: 5'
    path = tmp_path / f"out.{ext}"
    save_image_with_infotext(Image.new("RGBA", (8, 8), (1, 2, 3, 255)), path, text)
    with Image.open(path) as loaded:
        raw = loaded.getexif().get_ifd(it.EXIF_IFD)[it.EXIF_USER_COMMENT]
        assert raw[:8] == b"UNICODE\x00" and raw[8:] == text.encode("utf-16-be")  # piexif's layout
        assert read_image_infotext(loaded) == text


def test_user_comment_little_endian_and_ascii():
    assert it.decode_user_comment(b"UNICODE\x00" + "Steps: 1, 一".encode("utf-16-le")) == "Steps: 1, 一"
    assert it.decode_user_comment(b"UNICODE\x00" + "一 Steps: 1".encode("utf-16-be")) == "一 Steps: 1"
    assert it.decode_user_comment(b"ASCII\x00\x00\x00hello") == "hello"


def test_image_without_infotext(tmp_path):
    path = tmp_path / "plain.png"
    save_image_with_infotext(Image.new("L", (4, 4)), path, None)
    assert read_image_infotext(Image.open(path)) is None
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (4, 4)).save(path)
    assert read_image_infotext(Image.open(path)) is None

