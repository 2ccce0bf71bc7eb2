"""Big canvases of the demo domain, for measuring large-image grounding. Pure PIL/numpy.

3000-6000 px per side, 1-3 non-overlapping shapes of 150-400 px (the demo's colours and shapes, each
(colour, shape) pair at most once, colours jittered as in ``app.demo.scenes``), plain background in the
demo's range. Seeded: scene ``index`` of seed ``seed`` is always the same picture.
"""

from __future__ import annotations

import numpy as np

from app.demo.scenes import (
    BACKGROUND_RANGE,
    COLOURS,
    SHAPES,
    Scene,
    boxes_overlap,
    compose_scene,
)

CANVAS_SIDE_RANGE = (3000, 6000)
SHAPE_SIDE_RANGE = (150, 400)
MAX_OBJECTS = 3
SEED = 19  # this measurement's own stream, apart from the demo model's train/eval/test streams


def big_scene_rng(index: int, seed: int = SEED) -> np.random.Generator:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng([seed, index])


def make_big_scene(rng: np.random.Generator) -> Scene:
    """A canvas of 3000-6000 px per side holding 1-3 shapes of 150-400 px."""
    w, h = (int(v) for v in rng.integers(CANVAS_SIDE_RANGE[0], CANVAS_SIDE_RANGE[1] + 1, size=2))
    background = tuple(int(v) for v in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(kinds), size=wanted, replace=False)
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < wanted:
        side = int(rng.integers(SHAPE_SIDE_RANGE[0], SHAPE_SIDE_RANGE[1] + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        box = (x, y, x + side, y + side)
        if not any(boxes_overlap(box, other) for other in boxes):
            boxes.append(box)
    return compose_scene(rng, (w, h), background, [kinds[int(i)] for i in chosen], boxes)
