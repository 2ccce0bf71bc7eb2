"""Seeded synthetic scenes for the demo model: flat shapes on a plain background. Pure PIL/numpy.

The domain is fixed (issue 7) so the model is judged on scenes it never saw: 1-4 non-overlapping
filled shapes (circle, square, upward triangle whose box is its enclosing square), each
(colour, shape) pair at most once; side 12-45 % of the image's short side; background channels
each in 110-210; images 160-640 px per side; colours jittered by up to +-35 per channel.
Boxes are ``xyxy`` in original-image pixels, edges exclusive (a square drawn on columns
``x1 .. x2 - 1`` has box ``x1, x2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
SHAPE_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
# How a target is named: "the red circle", "red circle", "红色的圆形", "红色圆形".
PHRASE_STYLES = ("en_the", "en", "zh_de", "zh")

COLOUR_JITTER = 35
BACKGROUND_RANGE = (110, 210)
IMAGE_SIDE_RANGE = (160, 640)
SIZE_FRACTION_RANGE = (0.12, 0.45)
MAX_OBJECTS = 4
_PLACEMENT_TRIES = 200

# Disjoint random streams, so evaluation scenes are never training scenes.
STREAMS = {"train": 0, "eval": 1, "test": 2, "examples": 3}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # xyxy, original pixels
    rgb: tuple[int, int, int]

    def phrase(self, style: str = "en_the") -> str:
        return phrase_for(self.colour, self.shape, style)


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]

    @property
    def image_wh(self) -> tuple[int, int]:
        return self.image.size


@dataclass(frozen=True)
class Target:
    """One thing to find in a scene: the phrase asked and its ground-truth box."""

    phrase: str
    box: tuple[int, int, int, int]


def phrase_for(colour: str, shape: str, style: str = "en_the") -> str:
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown target {colour!r} {shape!r}; expected one of {list(COLOURS)} x {list(SHAPES)}")
    if style == "en_the":
        return f"the {colour} {shape}"
    if style == "en":
        return f"{colour} {shape}"
    if style == "zh_de":
        return f"{COLOUR_ZH[colour]}的{SHAPE_ZH[shape]}"
    if style == "zh":
        return f"{COLOUR_ZH[colour]}{SHAPE_ZH[shape]}"
    raise ValueError(f"unknown phrase style {style!r}; expected one of {PHRASE_STYLES}")


def scene_rng(split: str, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of ``split`` (a key of STREAMS); streams never overlap."""
    if split not in STREAMS:
        raise ValueError(f"split must be one of {list(STREAMS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng([STREAMS[split], index])


def make_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random scene with ``n_objects`` shapes (1-4; random when None), all drawn from ``rng``."""
    if n_objects is not None and not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n_objects}")
    w, h = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, size=2))
    background = tuple(int(v) for v in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))
    wanted = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(kinds), size=wanted, replace=False)
    boxes = _place_boxes(rng, (w, h), wanted)
    return compose_scene(rng, (w, h), background, [kinds[int(i)] for i in chosen], boxes)


def compose_scene(rng: np.random.Generator, size: tuple[int, int], background, kinds, boxes) -> Scene:
    """Draw one shape of each (colour, shape) in ``kinds`` into the matching box, colours jittered by ``rng``."""
    objects = []
    for (colour, shape), box in zip(kinds, boxes, strict=False):
        objects.append(SceneObject(colour, shape, box, jittered_colour(rng, colour)))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj.shape, obj.box, obj.rgb)
    return Scene(image=image, objects=tuple(objects), background=background)


def pick_target(rng: np.random.Generator, scene: Scene, style: str | None = None) -> Target:
    """One object of ``scene``, named in a random (or the given) phrase style."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    style = PHRASE_STYLES[int(rng.integers(len(PHRASE_STYLES)))] if style is None else style
    return Target(obj.phrase(style), obj.box)


def jittered_colour(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter, strict=True))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb) -> None:
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    elif shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_boxes(rng: np.random.Generator, image_wh: tuple[int, int], wanted: int) -> list[tuple[int, int, int, int]]:
    """Up to ``wanted`` non-overlapping squares; at least one (the first always fits)."""
    w, h = image_wh
    short = min(w, h)
    lo = int(np.ceil(SIZE_FRACTION_RANGE[0] * short))
    hi = int(np.floor(SIZE_FRACTION_RANGE[1] * short))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(_PLACEMENT_TRIES):
        if len(boxes) == wanted:
            break
        side = int(rng.integers(lo, hi + 1))
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        box = (x, y, x + side, y + side)
        if not any(boxes_overlap(box, other) for other in boxes):
            boxes.append(box)
    return boxes
