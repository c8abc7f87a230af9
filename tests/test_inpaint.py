"""Inpainting and outpainting on the fixture checkpoints (regular SD1 and 9-channel SD1 inpainting), 64×64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_params
from webui.engine import inpaint, outpaint
from webui.engine.errors import InvalidParameterError
from webui.engine.infotext import parse_infotext
from webui.engine.processing import encode_images


@pytest.fixture(scope="module")
def engine(checkpoints):
    return checkpoints.engine("sd1", "sd1-inpaint")


@pytest.fixture
def sd1(engine):
    engine.load_checkpoint("sd1.safetensors")
    return engine


def picture(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    base = np.zeros((h, w, 3), np.float32)
    base[..., 0] = np.linspace(0, 255, w)[None, :]
    base[..., 1] = np.linspace(255, 0, h)[:, None]
    base[..., 2] = 128
    return Image.fromarray(np.clip(base + rng.randn(h, w, 3) * 20, 0, 255).astype(np.uint8))


def square_mask(size=(64, 64), box=(16, 16, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def params(**kw):
    values = dict(init_images=[picture()], mask=square_mask(), mask_blur_x=0, mask_blur_y=0, denoising_strength=0.75,
                  steps=3, sampler_name="Euler")
    values.update(kw)
    return small_params(**values)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(px(a) - px(b)).max(axis=-1) > 0


# ---- whole picture ------------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", ["sd1.safetensors", "sd1-inpaint.safetensors"])
def test_unmasked_pixels_unchanged_and_masked_region_changed(engine, checkpoint):
    engine.load_checkpoint(checkpoint)
    p = params()
    result = engine.img2img(p)
    out, mask = result.images[0], np.asarray(square_mask()) > 0
    diff = changed(out, picture())
    assert out.size == (64, 64)
    assert not diff[~mask].any(), "pixels outside the mask must equal the input at blur 0"
    assert diff[mask].mean() > 0.9
    info = parse_infotext(result.infotexts[0])
    assert (info["Mask blur"], info["Inpaint area"], info["Masked content"]) == ("0", "Whole picture", "original")
    assert result.info.get("is_using_inpainting_conditioning", False) == (checkpoint == "sd1-inpaint.safetensors")


def test_invert_swaps_the_two_regions(sd1):
    result = sd1.img2img(params(inpainting_mask_invert=True))
    diff, mask = changed(result.images[0], picture()), np.asarray(square_mask()) > 0
    assert not diff[mask].any()
    assert diff[~mask].mean() > 0.9
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_blur_blends_the_edge_and_keeps_far_pixels(sd1):
    result = sd1.img2img(params(mask_blur_x=4, mask_blur_y=4))
    diff = changed(result.images[0], picture())
    far = np.ones((64, 64), bool)
    far[16 - 12:40 + 12, 16 - 12:40 + 12] = False      # beyond the blur kernel (2·int(2.5·4+0.5)+1 = 21 px wide)
    assert not diff[far].any()
    assert diff[20:36, 20:36].all()
    blurred = np.asarray(inpaint.blur_mask(square_mask(), 4, 4))
    assert 0 < blurred[16, 12] < 255 and blurred[28, 28] == 255 and blurred[0, 0] == 0


def test_regular_model_blends_the_latent_every_step(sd1):
    seen = []
    sd1.img2img(params(steps=4), progress=lambda info: seen.append(info.denoised.clone()))
    init = encode_images(sd1.models.current, [picture()], torch.device("cpu"))
    keep = 1 - inpaint.latent_mask(square_mask(), 8, 8, True, init)
    assert len(seen) == 4
    for denoised in seen:
        assert torch.allclose(denoised * keep, init * keep, atol=1e-5)


def test_inpainting_model_gets_mask_and_masked_image_channels(engine):
    engine.load_checkpoint("sd1-inpaint.safetensors")
    unet = engine.models.current.unet
    inputs = []
    handle = unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        engine.img2img(params(steps=2))
    finally:
        handle.remove()
    x = inputs[0]
    assert x.shape[1] == 9
    mask_channel = x[0, 4]
    expected = torch.zeros(8, 8)
    expected[2:5, 2:5] = 1     # the 24 px square from 16 to 40 covers latent cells 2..4
    assert torch.equal(mask_channel, expected)


def test_masked_content_modes(sd1):
    outputs = {fill: sd1.img2img(params(inpainting_fill=fill)).images[0] for fill in range(4)}
    mask = np.asarray(square_mask()) > 0
    for fill, image in outputs.items():
        assert not changed(image, picture())[~mask].any(), inpaint.FILL_MODES[fill]
    raw = {fill: px(image)[mask].tobytes() for fill, image in outputs.items()}
    assert len(set(raw.values())) == 4
    assert "Masked content: latent nothing" in sd1.img2img(params(inpainting_fill=3, steps=1)).infotexts[0]


def test_fill_uses_the_colours_around_the_mask():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((30, 30, 200), (32, 0, 64, 64))
    mask = square_mask(box=(4, 20, 20, 40))
    filled = np.asarray(inpaint.fill_masked(image, mask), dtype=np.int16)
    assert np.abs(filled[30, 12] - (200, 30, 30)).max() <= 2
    assert np.array_equal(filled[0:10], np.asarray(image)[0:10])


def test_alpha_channel_masks(sd1):
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (16, 16, 40, 40))
    assert np.array_equal(np.asarray(inpaint.binary_mask(strokes)), np.asarray(square_mask()))
    a = sd1.img2img(params(mask=strokes)).images[0]
    b = sd1.img2img(params()).images[0]
    assert a.tobytes() == b.tobytes()
    holed = picture().convert("RGBA")
    holed.paste((0, 0, 0, 0), (16, 16, 40, 40))
    assert np.array_equal(np.asarray(inpaint.mask_from_transparency(holed)), np.asarray(square_mask()))
    assert inpaint.mask_from_transparency(picture()) is None


# ---- only masked ----------------------------------------------------------------------------------------

def test_only_masked_box_grows_by_padding_and_to_the_aspect_ratio():
    mask = square_mask((100, 80), (40, 30, 50, 40))
    assert inpaint.mask_box(mask, 5) == (35, 25, 55, 45)
    assert inpaint.mask_box(mask, 100) == (0, 0, 100, 80)
    assert inpaint.fit_box_to_aspect((35, 25, 55, 45), 64, 32, 100, 80) == (25, 25, 65, 45)
    assert inpaint.fit_box_to_aspect((0, 25, 10, 45), 64, 32, 100, 80) == (0, 25, 40, 45)   # shifted inside
    assert inpaint.fit_box_to_aspect((0, 0, 100, 10), 32, 64, 100, 80) == (0, 0, 100, 80)    # capped by the image


def test_only_masked_touches_only_the_padded_box(sd1):
    image, mask = picture(96, 96, seed=3), square_mask((96, 96), (40, 44, 52, 56))
    p = params(init_images=[image], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
               mask_blur_x=2, mask_blur_y=2)
    result = sd1.img2img(p)
    out = result.images[0]
    assert out.size == (96, 96)       # the original's size, not width × height
    box = inpaint.mask_box(inpaint.blur_mask(mask, 2, 2), 8)
    x1, y1, x2, y2 = box
    diff = changed(out, image)
    outside = np.ones((96, 96), bool)
    outside[y1:y2, x1:x2] = False
    assert x2 - x1 < 96 and not diff[outside].any()
    assert diff[44:56, 40:52].mean() > 0.9
    info = parse_infotext(result.infotexts[0])
    assert (info["Inpaint area"], str(info["Masked area padding"]), info["Mask blur"]) == ("Only masked", "8", "2")
    whole = sd1.img2img(params(init_images=[image], mask=mask, width=96, height=96, mask_blur_x=2, mask_blur_y=2))
    assert whole.images[0].tobytes() != out.tobytes()


# ---- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"mask": square_mask((64, 48))}, "must have the same size"),
    ({"mask": Image.new("L", (64, 64), 0)}, "is empty"),
    ({"mask": Image.new("L", (64, 64), 255), "inpainting_mask_invert": True}, "nothing to change"),
    ({"inpainting_fill": 7}, "inpainting_fill"),
    ({"mask": "not an image"}, "must be an image"),
])
def test_bad_masks_are_refused_with_a_clear_message(sd1, change, message):
    with pytest.raises(InvalidParameterError, match=message) as err:
        sd1.img2img(params(**change))
    assert err.value.field in ("mask", "inpainting_fill")


def test_mask_without_an_image_is_refused(sd1):
    with pytest.raises(InvalidParameterError, match="mask"):
        sd1.txt2img(small_params(mask=square_mask()))


# ---- outpainting ------------------------------------------------------------------------------------------

def test_outpaint_size_and_unchanged_original(sd1):
    image = picture(64, 48, seed=5)
    p = outpaint.outpaint_params(params(), image, 16, ["left", "down"], mask_blur=0, fill=inpaint.FILL)
    result = sd1.img2img(p)
    out = result.images[0]
    assert out.size == (64 + 16, 48 + 16)
    assert np.array_equal(px(out)[0:48, 16:80], px(image))
    new_area = changed(out, p.init_images[0])
    assert new_area[48:, :].mean() > 0.5 and new_area[:, :16].mean() > 0.5


def test_outpaint_rounds_the_canvas_to_the_latent_grid():
    e = outpaint.expansion((60, 50), 16, ["left", "right"])
    assert (e.left, e.right, e.up, e.down) == (16, 20, 0, 6)
    assert (60 + e.left + e.right) % 8 == 0 and (50 + e.up + e.down) % 8 == 0
    canvas, mask = outpaint.extend_canvas(picture(60, 50), e)
    assert canvas.size == mask.size == (96, 56)
    assert np.asarray(mask)[0:50, 16:76].max() == 0 and np.asarray(mask)[:, :16].min() == 255
    with pytest.raises(InvalidParameterError, match="at least one side"):
        outpaint.expansion((64, 64), 16, [])


# ---- the Inpaint / Outpaint tabs' form mapping (no browser) -----------------------------------------------

FORM = {"prompt": "p", "negative_prompt": "", "sampler_name": "Euler", "scheduler": "Automatic", "steps": 3.0,
        "cfg_scale": 7, "width": 64.0, "height": 64, "n_iter": 1, "batch_size": 1, "seed": 5.0,
        "denoising_strength": 0.75, "mask_upload": None, "mask_blur": 0, "mask_mode": "Inpaint masked",
        "inpainting_fill": "original", "inpaint_area": "Whole picture", "inpaint_padding": 32,
        "resize_mode": "Just resize"}


def test_inpaint_form_takes_the_painted_layer_or_an_uploaded_mask():
    from webui.ui.edit_fields import inpaint_params

    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (16, 16, 40, 40))
    editor = {"background": picture().convert("RGBA"), "layers": [strokes], "composite": None}
    p = inpaint_params(FORM | {"editor": editor, "mask_blur": 3.0, "inpaint_area": "Only masked",
                               "mask_mode": "Inpaint not masked", "inpainting_fill": "latent noise"}, 1)
    assert np.array_equal(np.asarray(p.mask), np.asarray(square_mask()))
    assert (p.mask_blur_x, p.mask_blur_y, p.inpaint_full_res, p.inpainting_mask_invert, p.inpainting_fill) == \
        (3, 3, True, True, 2)
    assert p.init_images[0].mode == "RGB" and p.steps == 3 and p.seed == 5
    unpainted = {"background": picture(), "layers": [Image.new("RGBA", (64, 64))], "composite": None}
    uploaded = inpaint_params(FORM | {"editor": unpainted, "mask_upload": square_mask()}, 1)
    assert uploaded.mask is not None
    with pytest.raises(InvalidParameterError, match="paint over the area"):
        inpaint_params(FORM | {"editor": unpainted}, 1)
    with pytest.raises(InvalidParameterError, match="Inpaint box"):
        inpaint_params(FORM | {"editor": None}, 1)
    small = inpaint_params(FORM | {"editor": unpainted, "mask_upload": square_mask((32, 32))}, 1)
    with pytest.raises(InvalidParameterError, match="same size"):
        small.validate(img2img=True)


def test_outpaint_form_builds_the_canvas():
    from webui.ui.edit_fields import outpaint_params

    form = FORM | {"image": picture(), "pixels": 16.0, "directions": ["up", "right"], "inpainting_fill": "fill"}
    p = outpaint_params(form, 1)
    assert (p.width, p.height) == (80, 80) and p.init_images[0].size == (80, 80)
    assert p.mask.getbbox() == (0, 0, 80, 80) and np.asarray(p.mask)[16:, :64].max() == 0
    assert p.inpainting_fill == inpaint.FILL and not p.inpaint_full_res
    with pytest.raises(InvalidParameterError, match="at least one side"):
        outpaint_params(form | {"directions": []}, 1)


# ---- the tabs in a browser ----------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_inpaint_outpaint_depth_tabs_in_the_browser(tmp_path):
    import time

    from ui_server import Server, chromium, write_models

    write_models(tmp_path / "models" / "Stable-diffusion", ("alpha",))
    pic = tmp_path / "pic.png"
    picture().save(pic)
    server = Server(tmp_path, "alpha").start()
    errors: list[str] = []
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url)
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)

            def open_tab(tab: str) -> None:
                page.locator(f"#tab_{tab}-button").click()
                page.wait_for_function(f"document.getElementById('tab_{tab}-button').ariaSelected === 'true'")

            def number(elem_id: str, value) -> None:
                box = page.locator(f"#{elem_id} input[type=number]").first
                box.fill(str(value))
                box.press("Enter")

            def generate(tab: str) -> str:
                selector = f"#html_info_{tab} .html-container"
                before = page.inner_text(selector)
                page.click(f"#{tab}_generate")
                page.wait_for_function("([s, old]) => { const t = document.querySelector(s).innerText;"
                                       " return t !== old && t.trim() !== ''; }", arg=[selector, before],
                                       timeout=120_000)
                return page.inner_text(selector)

            open_tab("inpaint")
            # Gradio's editor builds its canvas asynchronously; a file given before that breaks the editor for
            # good (a page error on `reset_layers`), which a busy machine made likely
            page.wait_for_selector("#img2maskimg canvas", timeout=60_000)
            page.locator("#img2maskimg input[type=file]").first.set_input_files(str(pic))
            for elem_id, value in (("inpaint_steps", 2), ("inpaint_width", 64), ("inpaint_height", 64)):
                number(elem_id, value)
            # the upload finishes asynchronously; until the editor holds the picture, Generate says so
            # (Gradio does not re-render an unchanged message, so retries poll the text instead of awaiting a change)
            deadline = time.time() + 90
            message = generate("inpaint")
            while "drop a picture" in message and time.time() < deadline:
                time.sleep(2)
                page.click("#inpaint_generate")
                time.sleep(2)
                message = page.inner_text("#html_info_inpaint .html-container")
            assert "paint over the area" in message
            canvas = page.locator("#img2maskimg canvas").first
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 30, y)
            page.mouse.down()
            page.mouse.move(x + 30, y, steps=8)
            page.mouse.up()
            assert "Saved:" in generate("inpaint")
            assert "Masked content: original" in page.input_value("#generation_info_inpaint textarea")
            page.click("#inpaint_send_to_img2img")
            page.wait_for_function("document.getElementById('tab_img2img-button').ariaSelected === 'true'")
            page.wait_for_selector("#img2img_image img", timeout=10_000)

            open_tab("outpaint")
            page.locator("#outpaint_image input[type=file]").first.set_input_files(str(pic))
            time.sleep(1)
            number("outpaint_steps", 2)
            number("outpaint_pixels", 16)
            assert "Saved:" in generate("outpaint")
            assert "Size: 96x96" in page.input_value("#generation_info_outpaint textarea")

            open_tab("depth")
            assert "not a depth model" in page.inner_text("#depth_status")
    finally:
        server.stop()
    assert errors == []
