"""The headless command: `python launch.py txt2img|img2img …`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from webui.cli import main
from webui.engine.infotext import parse_infotext, read_image_infotext
from webui.testing.fixtures import FAMILIES

ROOT = Path(__file__).resolve().parent.parent


def _infotext(path: Path) -> dict:
    with Image.open(path) as im:
        return parse_infotext(read_image_infotext(im))


def test_launch_py_txt2img_writes_batch_with_infotext(checkpoints, tmp_path):
    ckpt = checkpoints.path("sd1")
    out = tmp_path / "out.png"
    cmd = [sys.executable, "launch.py", "txt2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", str(ckpt),
           "--prompt", "a red circle, top left", "--negative-prompt", "blurry", "--steps", "3", "--cfg-scale", "5",
           "--sampler", "DPM++ 2M", "--scheduler", "Karras", "--width", "64", "--height", "48", "--seed", "77",
           "--batch-size", "2", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    second = tmp_path / "out-1.png"
    assert out.is_file() and second.is_file()
    for path, seed in ((out, "77"), (second, "78")):
        with Image.open(path) as im:
            assert im.size == (64, 48)
        info = _infotext(path)
        assert info["Seed"] == seed and info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras"
        assert info["Prompt"] == "a red circle, top left" and info["Negative prompt"] == "blurry"
        assert info["Model"] == "sd1" and info["Steps"] == "3" and info["CFG scale"] == "5.0"


@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_command_for_every_family(family, checkpoints, tmp_path):
    ckpt = checkpoints.path(family)
    out = tmp_path / f"{family}.png"
    code = main(["txt2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", str(ckpt), "--prompt", "a cat",
                 "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--output", str(out)])
    assert code == 0
    with Image.open(out) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
        assert len(set(im.getdata())) > 1
    assert _infotext(out)["Model"] == family


def test_img2img_command(checkpoints, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (96, 64), (10, 200, 30)).save(init)
    out = tmp_path / "edit.png"
    code = main(["img2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", str(checkpoints.path("sd1")),
                 "--init-image", str(init), "--denoising-strength", "0.4", "--resize-mode", "Crop and resize",
                 "--prompt", "x", "--steps", "4", "--width", "64", "--height", "64", "--seed", "3", "--output", str(out)])
    assert code == 0
    info = _infotext(out)
    assert info["Denoising strength"] == "0.4" and info["Size-1"] == "64"


def test_default_output_folder_and_counter(checkpoints, tmp_path):
    args = ["txt2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", str(checkpoints.path("sd1")),
            "--steps", "1", "--width", "64", "--height", "64", "--seed", "11"]
    assert main(args) == 0 and main(args) == 0
    saved = sorted((checkpoints.data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    names = [p.name for p in saved[-2:]]
    assert names[0].endswith("-11.png") and names[1].endswith("-11.png") and names[0] != names[1]


def test_bad_input_exits_with_message(checkpoints, capsys):
    code = main(["txt2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", str(checkpoints.path("sd1")),
                 "--width", "65", "--height", "64", "--steps", "1"])
    assert code == 2
    assert "width: must be a multiple of 8" in capsys.readouterr().err
    code = main(["txt2img", "--data-dir", str(checkpoints.data_dir), "--ckpt", "missing.safetensors"])
    assert code == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_help_lists_commands_and_flags():
    proc = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("txt2img", "img2img", "--data-dir", "--ckpt-dir", "--vae-dir", "--lora-dir", "--embeddings-dir",
                 "--ckpt", "--ckpt-cache", "--listen", "--api", "--nowebui", "--port"):
        assert flag in proc.stdout, flag
