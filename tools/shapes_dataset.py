"""Synthetic captioned data for the demo model: flat shapes on flat backgrounds, drawn with OpenCV.

A `Scene` is the ground truth (what is drawn); `render(scene)` draws it and `caption(scene, ...)` describes it,
optionally leaving attributes out so that partial prompts work. `ShapesSampler` draws random scenes
reproducibly from a seed and can exclude a held-out set of scenes that the evaluation uses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

# Saturated, far-apart colours so that "nearest palette colour" is unambiguous (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 20, 20),
    "green": (20, 190, 40),
    "blue": (25, 50, 240),
    "yellow": (250, 230, 20),
    "purple": (140, 30, 170),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SIZES = ("small", "large")
CORNERS = POSITIONS[:4]

# Object centres as fractions of the image side, and half-extents as fractions (before jitter).
_CENTRES = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
_RADIUS = {"small": (0.095, 0.125), "large": (0.16, 0.19)}
_JITTER = 0.04  # keeps two large objects in neighbouring corners apart


@dataclass(frozen=True)
class Scene:
    """What an image shows. `positions` has one entry per object (two objects share colour/shape/size)."""

    colour: str
    shape: str
    size: str
    background: str
    positions: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.positions)

    def key(self) -> tuple:
        """Identity of the scene for held-out bookkeeping (two-object placement is not part of it)."""
        pos = self.positions[0] if self.count == 1 else "two"
        return (self.colour, self.shape, self.size, self.background, pos)


@dataclass(frozen=True)
class Placement:
    """Pixel geometry of one drawn object."""

    cx: float
    cy: float
    radius: float


def _draw_shape(img: np.ndarray, shape: str, p: Placement, colour: tuple[int, int, int]) -> None:
    shift = 4  # sub-pixel precision for anti-aliased edges
    s = 1 << shift
    if shape == "circle":
        cv2.circle(img, (round(p.cx * s), round(p.cy * s)), round(p.radius * s), colour, -1, cv2.LINE_AA, shift)
        return
    if shape == "square":
        h = p.radius * 0.88
        pts = [(p.cx - h, p.cy - h), (p.cx + h, p.cy - h), (p.cx + h, p.cy + h), (p.cx - h, p.cy + h)]
    else:  # upright equilateral triangle, enlarged so its area is comparable, centred on its bounding box
        r = p.radius * 1.2
        top, bottom = p.cy - 0.75 * r, p.cy + 0.75 * r
        pts = [(p.cx, top), (p.cx + 0.866 * r, bottom), (p.cx - 0.866 * r, bottom)]
    poly = np.array([[round(x * s), round(y * s)] for x, y in pts], dtype=np.int32)
    cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift)


def placements(scene: Scene, size: int, rng: random.Random | None = None) -> list[Placement]:
    """Pixel centres/radii of the scene's objects; jittered when `rng` is given."""
    out = []
    for pos in scene.positions:
        fx, fy = _CENTRES[pos]
        lo, hi = _RADIUS[scene.size]
        if rng is None:
            jx = jy = 0.0
            fr = (lo + hi) / 2
        else:
            jx, jy = rng.uniform(-_JITTER, _JITTER), rng.uniform(-_JITTER, _JITTER)
            fr = rng.uniform(lo, hi)
        out.append(Placement((fx + jx) * size, (fy + jy) * size, fr * size))
    return out


def render(scene: Scene, size: int = 64, rng: random.Random | None = None) -> np.ndarray:
    """Draw `scene` as an RGB uint8 array of shape (size, size, 3)."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = COLOURS[scene.background]
    for p in placements(scene, size, rng):
        _draw_shape(img, scene.shape, p, COLOURS[scene.colour])
    return img


def caption(scene: Scene, drop: frozenset[str] = frozenset()) -> str:
    """Describe `scene`; names in `drop` ("size", "colour", "shape", "position", "background") are left out.

    Count is always stated ("a"/"an" / "two"); position is only ever stated for a single object.
    """
    words = ["two"] if scene.count == 2 else []
    if "size" not in drop:
        words.append(scene.size)
    if "colour" not in drop:
        words.append(scene.colour)
    noun = scene.shape if "shape" not in drop else "shape"
    words.append(noun if scene.count == 1 else noun + "s")
    if scene.count == 1 and "position" not in drop:
        words.append("in the " + scene.positions[0])
    if "background" not in drop:
        words.append(f"on {_article(scene.background)} {scene.background} background")
    if scene.count == 1:
        words.insert(0, _article(words[0]))
    return " ".join(words)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


DROPPABLE = ("size", "colour", "shape", "position", "background")


class ShapesSampler:
    """Reproducible random scenes, images and captions.

    `held_out` scene keys are never produced (the evaluation prompts use them). `p_two` is the chance of
    two objects. Caption attributes are dropped independently with the probabilities in `drop_probs`.
    """

    def __init__(self, seed: int, size: int = 64, held_out: frozenset[tuple] = frozenset(), p_two: float = 0.25):
        self.rng = random.Random(seed)
        self.size = size
        self.held_out = held_out
        self.p_two = p_two

    def scene(self) -> Scene:
        while True:
            s = random_scene(self.rng, self.p_two)
            if s.key() not in self.held_out:
                return s

    def drops(self, drop_probs: dict[str, float]) -> frozenset[str]:
        return frozenset(k for k in DROPPABLE if self.rng.random() < drop_probs.get(k, 0.0))

    def batch(self, n: int, drop_probs: dict[str, float] | None = None) -> tuple[np.ndarray, list[str], list[Scene]]:
        """`n` images (n, size, size, 3) uint8, their captions and their scenes."""
        scenes = [self.scene() for _ in range(n)]
        imgs = np.stack([render(s, self.size, self.rng) for s in scenes])
        caps = [caption(s, self.drops(drop_probs or {})) for s in scenes]
        return imgs, caps, scenes


def random_scene(rng: random.Random, p_two: float = 0.25) -> Scene:
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    shape, size = rng.choice(SHAPES), rng.choice(SIZES)
    if rng.random() < p_two:
        positions = tuple(rng.sample(CORNERS, 2))
    else:
        positions = (rng.choice(POSITIONS),)
    return Scene(colour, shape, size, background, positions)


def eval_scenes(n: int = 64, seed: int = 20240, p_two: float = 0.25) -> list[Scene]:
    """The held-out evaluation scenes: distinct keys, a fixed share with two objects."""
    rng = random.Random(seed)
    n_two = round(n * p_two)
    out: dict[tuple, Scene] = {}
    while len(out) < n:
        want_two = len([s for s in out.values() if s.count == 2]) < n_two
        s = random_scene(rng, 1.0 if want_two else 0.0)
        out.setdefault(s.key(), s)
    return list(out.values())

