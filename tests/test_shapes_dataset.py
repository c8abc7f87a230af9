"""The demo model's synthetic data draws what its captions say, and the evaluation's classifiers read it back."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from eval_demo_model import ATTRIBUTES, accuracies, read_image, score  # noqa: E402
from shapes_dataset import (  # noqa: E402
    COLOURS, Scene, ShapesSampler, caption, eval_scenes, placements, random_scene, render,
)


def test_background_and_object_colours_at_expected_pixels() -> None:
    scene = Scene("red", "square", "large", "blue", ("top left",))
    img = render(scene, 64)
    p = placements(scene, 64)[0]
    assert tuple(img[int(p.cy), int(p.cx)]) == COLOURS["red"]
    assert tuple(img[60, 60]) == COLOURS["blue"]
    assert tuple(img[3, 60]) == COLOURS["blue"]
    assert tuple(img[48, 48]) == COLOURS["blue"]  # nothing in the bottom right


@pytest.mark.parametrize("position,quadrant", [
    ("top left", (slice(0, 32), slice(0, 32))), ("top right", (slice(0, 32), slice(32, 64))),
    ("bottom left", (slice(32, 64), slice(0, 32))), ("bottom right", (slice(32, 64), slice(32, 64))),
])
def test_object_lies_in_its_quadrant(position: str, quadrant: tuple[slice, slice]) -> None:
    scene = Scene("yellow", "circle", "small", "black", (position,))
    img = render(scene, 64, random.Random(3))
    fg = np.all(img == COLOURS["yellow"], axis=2)
    assert fg.sum() > 100
    assert fg[quadrant].sum() == fg.sum()


def test_center_object_covers_the_middle() -> None:
    img = render(Scene("white", "triangle", "large", "purple", ("center",)), 64, random.Random(0))
    assert tuple(img[32, 32]) == COLOURS["white"]
    assert tuple(img[2, 2]) == COLOURS["purple"]


def test_two_objects_are_two_separate_blobs() -> None:
    rng = random.Random(7)
    for _ in range(50):
        scene = Scene("green", "circle", "large", "orange", tuple(rng.sample(["top left", "top right",
                                                                             "bottom left", "bottom right"], 2)))
        img = render(scene, 64, rng)
        mask = np.all(img == COLOURS["green"], axis=2).astype(np.uint8)
        n, _ = cv2.connectedComponents(mask)
        assert n - 1 == 2


def test_sizes_differ_in_area() -> None:
    small = render(Scene("black", "square", "small", "white", ("center",)), 64)
    large = render(Scene("black", "square", "large", "white", ("center",)), 64)
    a_small = np.all(small == COLOURS["black"], axis=2).sum()
    a_large = np.all(large == COLOURS["black"], axis=2).sum()
    assert a_large > 2 * a_small


def test_captions_name_the_attributes_and_drop_on_request() -> None:
    one = Scene("red", "circle", "large", "orange", ("top left",))
    assert caption(one) == "a large red circle in the top left on an orange background"
    assert caption(one, frozenset({"size", "colour"})) == "a circle in the top left on an orange background"
    assert caption(one, frozenset({"shape", "position", "background"})) == "a large red shape"
    two = Scene("yellow", "square", "small", "black", ("top left", "bottom right"))
    assert caption(two, frozenset({"size"})) == "two yellow squares on a black background"


def test_sampler_is_deterministic_and_respects_held_out() -> None:
    a_imgs, a_caps, _ = ShapesSampler(5).batch(16, {"colour": 0.5})
    b_imgs, b_caps, _ = ShapesSampler(5).batch(16, {"colour": 0.5})
    c_imgs, _, _ = ShapesSampler(6).batch(16)
    assert np.array_equal(a_imgs, b_imgs) and a_caps == b_caps
    assert not np.array_equal(a_imgs, c_imgs)
    held = frozenset(s.key() for s in eval_scenes(64))
    _, _, scenes = ShapesSampler(5, held_out=held).batch(400)
    assert not any(s.key() in held for s in scenes)


def test_eval_scenes_are_fixed_and_mixed() -> None:
    scenes = eval_scenes(64)
    assert scenes == eval_scenes(64)
    assert len({s.key() for s in scenes}) == 64
    assert 10 <= sum(s.count == 2 for s in scenes) <= 20
    assert all(s.colour != s.background for s in scenes)


def test_classifiers_recover_ground_truth() -> None:
    rng = random.Random(11)
    rows = []
    for _ in range(300):
        scene = random_scene(rng, 0.3)
        img = render(scene, 64, rng)
        rows.append(score(scene, read_image(img)))
        rows.append(score(scene, read_image(cv2.GaussianBlur(img, (3, 3), 0.8))))  # a soft decoder's look
    acc = accuracies(rows)
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_classifiers_read_a_known_image() -> None:
    r = read_image(render(Scene("orange", "triangle", "large", "green", ("bottom right",)), 64))
    assert (r.background, r.colour, r.shape, r.position, r.count) == ("green", "orange", "triangle",
                                                                      "bottom right", 1)
    empty = read_image(np.full((64, 64, 3), COLOURS["white"], np.uint8))
    assert empty.count == 0 and empty.background == "white"
