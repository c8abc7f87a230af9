"""Labelled grids: sizes, where the label bands are, wrapping, inactive labels, Z sub-grids."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.engine import grids


def solid(color, size=(64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def dark_pixels(image: Image.Image, box) -> int:
    region = np.asarray(image.crop(box).convert("L"))
    return int((region < 128).sum())


def test_image_grid_layout_and_pixels():
    ims = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255))]
    g = grids.image_grid(ims, cols=2, margin=4)
    assert g.size == (64 * 2 + 4, 64 * 2 + 4)
    assert g.getpixel((10, 10)) == (255, 0, 0)
    assert g.getpixel((64 + 4 + 10, 10)) == (0, 255, 0)
    assert g.getpixel((10, 64 + 4 + 10)) == (0, 0, 255)
    assert g.getpixel((64 + 4 + 10, 64 + 4 + 10)) == (0, 0, 0)   # the gap stays background


def test_image_grid_default_is_near_square():
    g = grids.image_grid([solid("white")] * 5)
    assert g.size == (3 * 64, 2 * 64)


def test_annotated_grid_adds_bands_with_text():
    cells = [[solid((200, 0, 0)), solid((0, 200, 0))], [solid((0, 0, 200)), solid((200, 200, 0))]]
    g = grids.annotated_grid(cells, ["Seed: 1", "Seed: 2"], ["Steps: 4", "Steps: 8"])
    pad_left, pad_top = grids.label_band_heights(g, 64, 64, 2, 2)
    assert pad_left >= 48 and pad_top > 10
    assert g.size == (pad_left + 128, pad_top + 128)
    # the images sit below/right of the bands, unchanged
    assert g.getpixel((pad_left + 5, pad_top + 5)) == (200, 0, 0)
    assert g.getpixel((pad_left + 64 + 5, pad_top + 64 + 5)) == (200, 200, 0)
    # text was drawn in each column header and each row header
    for c in range(2):
        assert dark_pixels(g, (pad_left + c * 64, 0, pad_left + (c + 1) * 64, pad_top)) > 5
    for r in range(2):
        assert dark_pixels(g, (0, pad_top + r * 64, pad_left, pad_top + (r + 1) * 64)) > 5
    # the top-left corner stays blank
    assert dark_pixels(g, (0, 0, pad_left, pad_top)) == 0


def test_no_labels_means_no_bands():
    cells = [[solid("red"), solid("blue")]]
    g = grids.annotated_grid(cells, [], [])
    assert g.size == (128, 64)
    g = grids.annotated_grid(cells, ["a", "b"], [])
    assert g.width == 128 and g.height > 64


def test_long_labels_wrap_into_more_lines():
    cells = [[solid("red"), solid("blue")]]
    short = grids.annotated_grid(cells, ["a", "b"])
    long = grids.annotated_grid(cells, ["a very long column label that cannot fit on one line", "b"])
    assert long.height > short.height + 20


def test_wrap_text_fits_width_and_splits_long_words():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fnt = grids.font(12)
    lines = grids.wrap_text(draw, "one two three four five six seven", fnt, 50)
    assert len(lines) > 1
    assert all(draw.textlength(line, font=fnt) <= 50 for line in lines)
    assert " ".join(lines) == "one two three four five six seven"
    parts = grids.wrap_text(draw, "x" * 60, fnt, 40)
    assert len(parts) > 1 and "".join(parts) == "x" * 60


def test_inactive_labels_are_grey():
    cells = [[solid("white")]]
    active = grids.annotated_grid(cells, [[grids.Label("word", True)]])
    inactive = grids.annotated_grid(cells, [[grids.Label("word", False)]])
    band = (0, 0, 64, active.height - 64)
    a = np.asarray(active.crop(band).convert("L"))
    i = np.asarray(inactive.crop(band).convert("L"))
    assert a.min() < 60            # black text
    assert 100 < i.min() < 200     # grey text (153) with its strike-through


def test_mixed_cell_sizes_are_centred():
    cells = [[solid((255, 0, 0), (64, 64)), solid((0, 0, 255), (32, 32))]]
    g = grids.annotated_grid(cells, [], [])
    assert g.size == (128, 64)
    assert g.getpixel((64 + 32, 32)) == (0, 0, 255)
    assert g.getpixel((64 + 2, 2)) == (255, 255, 255)


def test_grid_of_grids_puts_titles_above_each():
    sub = [grids.annotated_grid([[solid((10, 10, 10))]], ["x"], ["y"]) for _ in range(3)]
    z = grids.grid_of_grids(sub, ["CFG: 5", "CFG: 7", "CFG: 9"], margin=10)
    assert z.width == 3 * sub[0].width + 2 * 10
    top = z.height - sub[0].height
    assert top > 5
    for i in range(3):
        x0 = i * (sub[0].width + 10)
        assert dark_pixels(z, (x0, 0, x0 + sub[0].width, top)) > 5


def test_empty_grid_is_an_error():
    with pytest.raises(ValueError):
        grids.image_grid([])
    with pytest.raises(ValueError):
        grids.annotated_grid([], [], [])
