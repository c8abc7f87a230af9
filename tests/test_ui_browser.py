"""End-to-end tests of the web UI in headless Chromium against the real server (`python launch.py`).

The server runs on two tiny random SD1 fixture checkpoints that declare 64×64 as their size, so a
generation takes a few seconds on CPU. Screenshots of every tab go to pytest's temp folder, or to
docs/screenshots/ when UPDATE_SCREENSHOTS=1 is set. The browser tests skip (with the reason) when Chromium
or playwright is missing; the form-mapping tests at the end need neither.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from webui.engine.errors import InvalidParameterError
from webui.engine.infotext import parse_infotext, read_image_infotext, save_image_with_infotext
from webui.ui.extra_networks import insert_tag
from webui.ui.fields import COMMON_FIELDS, build_params, fields_from_infotext

from ui_server import REPO, Server, app_page, chromium, write_models

TABS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint", "outpaint": "Outpaint",
        "depth": "Depth", "extras": "Extras", "pnginfo": "PNG Info", "settings": "Settings",
        "extensions": "Extensions"}
GENERATION_TIMEOUT = 120_000  # ms; the CPU may be shared



# ---- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        return REPO / "docs" / "screenshots"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui-data")
    write_models(root / "models" / "Stable-diffusion", ("alpha", "beta"))
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    save_file({"placeholder": torch.zeros(1)}, str(lora_dir / "detail_tweaker.safetensors"))  # listed, never loaded
    return root


@pytest.fixture(scope="module")
def server(data_dir):
    srv = Server(data_dir, "alpha").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server, screenshots):
    with app_page(browser, server.url) as pg:
        pg.screenshots = screenshots
        pg.data_dir = server.data_dir
        yield pg


# ---- helpers -----------------------------------------------------------------------------------------

def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def open_tab(page, tab_id: str) -> None:
    page.locator(f"#tab_{tab_id}-button").click()
    page.wait_for_function(f"document.getElementById('tab_{tab_id}-button').getAttribute('aria-selected') === 'true'")


def wait_text(page, selector: str, needle: str, timeout: int = GENERATION_TIMEOUT) -> str:
    try:
        page.wait_for_function("([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
                               arg=[selector, needle], timeout=timeout)
    except PlaywrightTimeout:
        shown = page.locator(selector).all_inner_texts()
        raise AssertionError(f"{selector} never showed {needle!r}; it shows {shown!r}; "
                             f"page errors: {getattr(page, 'errors', None)!r}") from None
    return page.inner_text(selector)


def generate(page, tab: str, prompt: str, steps: int, seed: int | None = None) -> list[Path]:
    """Fill the prompt, click Generate, wait for the result; returns the saved files named under the gallery."""
    page.fill(f"#{tab}_prompt textarea", prompt)
    set_number(page, f"{tab}_steps", steps)
    if seed is not None:
        page.fill(f"#{tab}_seed input", str(seed))
    return click_generate(page, tab)


def click_generate(page, tab: str) -> list[Path]:
    """Click Generate and wait until the info under the gallery names newly saved files."""
    selector = f"#html_info_{tab} .html-container"
    before = page.inner_text(selector)
    page.click(f"#{tab}_generate")
    page.wait_for_function("([s, old]) => { const t = document.querySelector(s).innerText;"
                           " return t !== old && t.trim() !== ''; }", arg=[selector, before],
                           timeout=GENERATION_TIMEOUT)
    text = page.inner_text(selector)
    assert "Saved:" in text, text
    return saved_paths(text, page.data_dir)


def saved_paths(text: str, data_dir: Path) -> list[Path]:
    """Files named under the gallery; folders are shown relative to the data folder."""
    return [data_dir / folder / name for name, folder in re.findall(r"Saved: (\S+)\s+\((.+?)\)", text)]


def shoot(page, name: str) -> None:
    page.screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(page.screenshots / f"{name}.png"), full_page=True)


def infotext_of(path: Path) -> str:
    with Image.open(path) as im:
        return read_image_infotext(im) or ""


# ---- tests -------------------------------------------------------------------------------------------

@pytest.mark.browser
def test_each_tab_renders_without_console_errors(page):
    assert page.locator("#setting_sd_model_checkpoint").is_visible()
    for tab_id, label in TABS.items():
        open_tab(page, tab_id)
        assert page.locator(f"#tab_{tab_id}").is_visible(), label
        time.sleep(0.3)  # let lazily rendered tab content settle before the screenshot
        shoot(page, tab_id)
    for tab_id in ("inpaint", "outpaint", "depth", "extras", "extensions"):
        open_tab(page, tab_id)
        assert "not available yet" not in page.inner_text(f"#tab_{tab_id}")
    open_tab(page, "txt2img")
    assert page.errors == []


@pytest.mark.browser
def test_generate_shows_image_and_saves_png_with_infotext(page, data_dir):
    # the default size is the model's natural size (declared 64x64 in the fixture's metadata)
    assert page.input_value("#txt2img_width input[type=number]") == "64"
    assert page.input_value("#txt2img_height input[type=number]") == "64"
    paths = generate(page, "txt2img", "a red circle on white", steps=4, seed=1234)
    page.wait_for_selector("#txt2img_gallery img", timeout=10_000)
    info = page.input_value("#generation_info_txt2img textarea")
    assert info.startswith("a red circle on white\n")
    assert "Steps: 4" in info and "Seed: 1234" in info and "Size: 64x64" in info and "Model: alpha" in info
    assert len(paths) == 1 and paths[0].is_file()
    assert paths[0].parent.parent == data_dir / "outputs" / "txt2img-images"
    assert infotext_of(paths[0]) == info
    with Image.open(paths[0]) as im:
        assert im.size == (64, 64)
    # ♻ puts the seed of the shown image back; 🎲 makes it random again
    page.fill("#txt2img_seed input", "-1")
    page.click("#txt2img_reuse_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '1234'")
    page.click("#txt2img_random_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '-1'")
    shoot(page, "txt2img")
    # "Send to img2img" carries the image and its parameters over
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("document.getElementById('tab_img2img-button').getAttribute('aria-selected') === 'true'")
    page.wait_for_function("document.querySelector('#img2img_prompt textarea').value === 'a red circle on white'")
    assert page.input_value("#img2img_seed input") == "1234"
    assert page.input_value("#img2img_steps input[type=number]") == "4"
    page.wait_for_selector("#img2img_image img", timeout=10_000)
    assert page.errors == []


def current_step(page) -> int:
    found = re.search(r"Step (\d+)/", page.inner_text("#txt2img_progress .html-container"))
    return int(found.group(1)) if found else 0


@pytest.mark.browser
def test_skip_then_interrupt_a_running_job(page):
    page.fill("#txt2img_prompt textarea", "a long job")
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 4)
    page.click("#txt2img_generate")
    progress = wait_text(page, "#txt2img_progress .html-container", "Step ")
    assert re.search(r"Step \d+/600", progress), progress
    page.wait_for_selector("#txt2img_live_preview img", timeout=20_000)  # live preview while it runs
    at_skip = current_step(page)
    page.click("#txt2img_skip")  # ends the first image early; the job goes on with the second
    page.wait_for_function("(n) => { const m = document.querySelector('#txt2img_progress .html-container')"
                           ".innerText.match(/Step (\\d+)\\//); return m && +m[1] > n; }", arg=at_skip + 10,
                           timeout=60_000)
    started = time.time()
    page.click("#txt2img_interrupt")
    summary = wait_text(page, "#html_info_txt2img .html-container", "Interrupted", timeout=60_000)
    assert time.time() - started < 30
    kept = int(re.search(r"kept (\d+) image", summary).group(1))
    assert kept in (2, 3), summary
    page.wait_for_selector("#txt2img_gallery img", timeout=10_000)
    assert page.locator("#txt2img_generate").is_enabled()


@pytest.mark.browser
def test_png_info_round_trip(page, tmp_path):
    # an A1111-style image from elsewhere: PNG Info shows its text and fills txt2img from it
    source = tmp_path / "foreign.png"
    text = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Karras, "
            "CFG scale: 5.5, Seed: 4321, Size: 64x64, Model: alpha, Clip skip: 2, Version: v1.10.1")
    save_image_with_infotext(Image.new("RGB", (64, 64), (90, 120, 200)), source, text)
    open_tab(page, "pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(source))
    page.wait_for_function("document.querySelector('#pnginfo_generation_info textarea').value.includes('Seed: 4321')")
    assert page.input_value("#pnginfo_generation_info textarea") == text
    shoot(page, "pnginfo")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("document.getElementById('tab_txt2img-button').getAttribute('aria-selected') === 'true'")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a lighthouse at dusk'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "fog"
    assert page.input_value("#txt2img_steps input[type=number]") == "5"
    assert page.input_value("#txt2img_cfg_scale input[type=number]") == "5.5"
    assert page.input_value("#txt2img_seed input") == "4321"
    assert page.input_value("#txt2img_sampling input") == "DPM++ 2M"
    assert page.input_value("#txt2img_scheduler input") == "Karras"
    assert page.input_value("#setting_CLIP_stop_at_last_layers input[type=number]") == "2"

    # our own output read back and regenerated from its parameters gives the same image
    first = generate(page, "txt2img", "a lighthouse at dusk", steps=5)[0]
    open_tab(page, "pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(first))
    page.wait_for_function("([s, n]) => document.querySelector(s).value.includes(n)",
                           arg=["#pnginfo_generation_info textarea", "Seed: 4321"])
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("document.getElementById('tab_txt2img-button').getAttribute('aria-selected') === 'true'")
    second = click_generate(page, "txt2img")[0]
    assert second != first
    assert infotext_of(second) == infotext_of(first)
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(first)))

    # Send to img2img carries the image as the init image, and the parameters
    open_tab(page, "pnginfo")
    page.click("#pnginfo_send_to_img2img")
    page.wait_for_function("document.getElementById('tab_img2img-button').getAttribute('aria-selected') === 'true'")
    page.wait_for_function("document.querySelector('#img2img_prompt textarea').value === 'a lighthouse at dusk'")
    page.wait_for_selector("#img2img_image img", timeout=10_000)
    open_tab(page, "txt2img")
    page.click("#txt2img_random_seed")  # any later event: the page must stay error-free
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '-1'")
    assert page.errors == []


@pytest.mark.browser
def test_extra_networks_card_inserts_a_lora_tag(page):
    page.fill("#txt2img_prompt textarea", "a cat")
    page.click("#txt2img_extra_networks")
    page.locator("#txt2img_lora_cards").get_by_text("detail_tweaker").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a cat <lora:detail_tweaker:1>'")
    assert page.errors == []


@pytest.mark.browser
def test_img2img_generates_from_the_init_image(page, tmp_path):
    source = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source)
    open_tab(page, "img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#img2img_image img", timeout=10_000)
    set_number(page, "img2img_denoising_strength", 0.5)
    paths = generate(page, "img2img", "a red square", steps=6)
    info = infotext_of(paths[0])
    assert "Denoising strength: 0.5" in info and "Steps: 6" in info
    assert paths[0].parent.parent.name == "img2img-images"
    shoot(page, "img2img")
    assert page.errors == []


@pytest.mark.browser
def test_extras_upscales_and_saves_with_the_source_infotext(page, tmp_path, data_dir):
    source = tmp_path / "small.png"
    save_image_with_infotext(Image.new("RGB", (40, 30), (20, 160, 60)), source, "a green field\nSteps: 3, Seed: 9")
    open_tab(page, "extras")
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#extras_image img", timeout=10_000)
    set_number(page, "extras_upscaling_resize", 2)
    page.click("#extras_generate")
    status = wait_text(page, "#extras_generate_status", "Saved")
    assert "80×60" in status and "Postprocess upscaler: Lanczos" in status
    saved = sorted((data_dir / "outputs" / "extras-images").rglob("*.png"))
    assert saved, status
    with Image.open(saved[-1]) as out:
        assert out.size == (80, 60)
        assert out.getpixel((40, 30)) == (20, 160, 60)
        assert out.info.get("parameters") == "a green field\nSteps: 3, Seed: 9"
    shoot(page, "extras")
    assert page.errors == []


@pytest.mark.browser
def test_script_dropdown_runs_the_prompt_matrix(page):
    assert not page.locator("#txt2img_script_prompt_matrix").is_visible()
    page.click("#txt2img_script_list input")
    page.get_by_role("option", name="Prompt matrix").click()
    page.wait_for_selector("#txt2img_script_prompt_matrix", state="visible")
    try:
        paths = generate(page, "txt2img", "a cat|red hat", steps=2, seed=21)
        texts = [infotext_of(path) for path in paths]
        prompts = sorted(t.split("\n")[0] for t in texts if "Seed: 21" in t)
        assert {"a cat", "a cat, red hat"} <= set(prompts), texts
        sizes = sorted(Image.open(path).size for path in paths)
        assert sizes[-1][0] > 64 and sizes[-1][1] > 64   # the labelled grid is larger than one 64x64 cell
    finally:
        page.click("#txt2img_script_list input")
        page.get_by_role("option", name="None").click()
    assert page.errors == []


@pytest.mark.browser
def test_switching_checkpoint_from_the_dropdown(page, data_dir):
    try:
        page.click("#setting_sd_model_checkpoint input")
        page.get_by_role("option", name=re.compile(r"^beta\.safetensors")).click()
        wait_text(page, "#quicksettings_status .html-container", "Loaded beta.safetensors", timeout=60_000)
        assert json.loads((data_dir / "config.json").read_text())["sd_model_checkpoint"] == "beta.safetensors"
        paths = generate(page, "txt2img", "after the switch", steps=4)
        assert "Model: beta" in infotext_of(paths[0])
    finally:
        page.click("#setting_sd_model_checkpoint input")
        page.get_by_role("option", name=re.compile(r"^alpha\.safetensors")).click()
        wait_text(page, "#quicksettings_status .html-container", "Loaded alpha.safetensors", timeout=60_000)
    assert page.errors == []


def apply_settings(page, box, value: str, needle: str) -> str:
    """Type `value` into `box` and press Apply until the result shows `needle`. Under load the edit can be lost:
    it reaches Gradio's state after the click (which then reports "Nothing changed."), or the freshly shown tab
    re-mounts the input. So each attempt types the value again and checks the page holds it before clicking."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    attempts = 4
    for attempt in range(1, attempts + 1):
        box.fill(value)
        box.press("Tab")  # commit the edit before the click reads the form
        try:  # a fresh handle each time: a re-mount between the edit and this check detaches the old input
            page.wait_for_function("([e, v]) => e.isConnected && e.value === v", arg=[box.element_handle(), value],
                                   timeout=10_000)
        except PlaywrightTimeout:
            if attempt == attempts:
                raise
            continue
        page.click("#settings_submit")
        try:
            return wait_text(page, "#settings_result .html-container", needle,
                             timeout=20_000 if attempt == attempts else 5_000)
        except AssertionError:
            if attempt == attempts:
                raise


@pytest.mark.browser
def test_settings_refuse_bad_values_and_persist_good_ones(page, data_dir):
    open_tab(page, "settings")
    page.get_by_role("tab", name="Live previews").click()
    box = page.locator("#setting_show_progress_every_n_steps input")
    message = apply_settings(page, box, "500", "Not saved")
    assert "show_progress_every_n_steps" in message and "between 0 and 100" in message
    config = data_dir / "config.json"
    before = json.loads(config.read_text()) if config.exists() else {}
    assert before.get("show_progress_every_n_steps") != 500
    apply_settings(page, box, "3", "Saved 1 setting")
    assert json.loads(config.read_text())["show_progress_every_n_steps"] == 3
    shoot(page, "settings")
    assert page.errors == []


@pytest.mark.browser
def test_a_running_job_survives_a_page_reload(page, server):
    page.fill("#txt2img_prompt textarea", "still running")
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 4)
    page.click("#txt2img_generate")
    wait_text(page, "#txt2img_progress .html-container", "Step ")
    page.reload()
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    progress = wait_text(page, "#txt2img_progress .html-container", "Step ", timeout=30_000)
    assert re.search(r"Step \d+/600", progress), progress
    assert page.locator("#txt2img_generate").is_disabled()
    page.click("#txt2img_interrupt")
    wait_text(page, "#html_info_txt2img .html-container", "Interrupted", timeout=60_000)
    page.wait_for_selector("#txt2img_gallery img", timeout=10_000)


# ---- the form mapping, without a browser --------------------------------------------------------------

FORM = {"prompt": "p", "negative_prompt": "n", "sampler_name": "Euler a", "scheduler": "Automatic", "steps": 6.0,
        "cfg_scale": 7, "width": 64.0, "height": 72, "n_iter": 2, "batch_size": 1, "seed": 5.0, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, "enable_hr": False}


def test_build_params_converts_browser_numbers():
    p = build_params(FORM, clip_skip=2.0)
    assert (p.steps, p.width, p.height, p.n_iter, p.seed, p.clip_skip) == (6, 64, 72, 2, 5, 2)
    assert all(isinstance(getattr(p, k), int) for k in ("steps", "width", "seed", "clip_skip"))
    assert p.cfg_scale == 7.0 and isinstance(p.cfg_scale, float)
    assert set(COMMON_FIELDS) <= set(FORM)


HIRES_FORM = {"enable_hr": True, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_denoising_strength": 0.7,
              "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": "Use same checkpoint",
              "hr_sampler_name": "Use same sampler", "hr_prompt": "", "hr_negative_prompt": "",
              "refiner_checkpoint": None, "refiner_switch_at": 0.8}


@pytest.mark.parametrize("change, field", [({"steps": 6.5}, "steps"), ({"seed": None}, "seed"),
                                           (HIRES_FORM | {"hr_second_pass_steps": 2.5}, "hr_second_pass_steps")])
def test_build_params_refuses_with_the_field_name(change, field):
    with pytest.raises(InvalidParameterError) as err:
        build_params(FORM | change, clip_skip=1)
    assert err.value.field == field


def test_build_params_img2img_needs_an_image():
    with pytest.raises(InvalidParameterError, match="init_image"):
        build_params(FORM | {"init_image": None, "denoising_strength": 0.5, "resize_mode": "Just resize"}, 1,
                     img2img=True)
    p = build_params(FORM | {"init_image": Image.new("RGBA", (8, 8)), "denoising_strength": 0.5,
                             "resize_mode": "Crop and resize"}, 1, img2img=True)
    assert p.init_images[0].mode == "RGB" and p.resize_mode == 1 and p.denoising_strength == 0.5


def test_fields_from_infotext_splits_old_combined_sampler_names():
    text = "cat\nNegative prompt: dog\nSteps: 9, Sampler: DPM++ 2M Karras, CFG scale: 4, Seed: 7, Size: 64x96"
    out = fields_from_infotext(parse_infotext(text), ["DPM++ 2M", "Euler a"], ["Automatic", "Karras"])
    assert out["sampler_name"] == "DPM++ 2M" and out["scheduler"] == "Karras"
    assert (out["prompt"], out["negative_prompt"], out["steps"], out["cfg_scale"]) == ("cat", "dog", 9, 4.0)
    assert (out["seed"], out["width"], out["height"], out["enable_hr"]) == (7, 64, 96, False)


def test_fields_from_infotext_denoising_goes_to_hires_or_img2img():
    text = "x\nSteps: 9, Sampler: Euler a, Seed: 7, Size: 64x64, Denoising strength: 0.4, Hires upscale: 2"
    parsed = parse_infotext(text)
    txt = fields_from_infotext(parsed, ["Euler a"], ["Automatic"])
    assert txt["enable_hr"] is True and txt["hr_denoising_strength"] == 0.4 and txt["hr_scale"] == 2.0
    assert fields_from_infotext(parsed, ["Euler a"], ["Automatic"], img2img=True)["denoising_strength"] == 0.4


def test_insert_tag_appends_once():
    assert insert_tag("", "<lora:a:1>") == "<lora:a:1>"
    assert insert_tag("cat ", "<lora:a:1>") == "cat <lora:a:1>"
    assert insert_tag("cat <lora:a:1>", "<lora:a:1>") == "cat <lora:a:1>"


def test_build_params_maps_hires_fields():
    p = build_params(FORM | HIRES_FORM | {"hr_second_pass_steps": 4.0, "hr_sampler_name": "Euler"}, clip_skip=1)
    assert p.enable_hr and p.hr_upscaler == "Latent" and p.hr_scale == 2.0 and p.hr_second_pass_steps == 4
    assert p.denoising_strength == 0.7 and p.hr_sampler_name == "Euler" and p.hr_checkpoint_name is None
