"""Pure box geometry: corner order, clamping, scaling and rounding to pixels.

Sizes are named by axis order (``image_wh``, ``input_wh``); boxes are ``xyxy``.
Nothing here imports torch or touches I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in some coordinate space, ``xyxy``, floats."""

    x1: float
    y1: float
    x2: float
    y2: float

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Point:
    """A point in some coordinate space."""

    x: float
    y: float


def is_finite_box(box: Box) -> bool:
    return all(math.isfinite(v) for v in box.as_list())


def ordered(box: Box) -> Box:
    """Swap corners so that x1 <= x2 and y1 <= y2."""
    return Box(min(box.x1, box.x2), min(box.y1, box.y2), max(box.x1, box.x2), max(box.y1, box.y2))


def clamp_box(box: Box, limit_wh: tuple[float, float]) -> Box:
    """Clamp every coordinate into ``[0, w] x [0, h]``."""
    w, h = limit_wh
    return Box(_clamp(box.x1, 0, w), _clamp(box.y1, 0, h), _clamp(box.x2, 0, w), _clamp(box.y2, 0, h))


def clamp_point(point: Point, limit_wh: tuple[float, float]) -> Point:
    w, h = limit_wh
    return Point(_clamp(point.x, 0, w), _clamp(point.y, 0, h))


def scale_box(box: Box, from_wh: tuple[float, float], to_wh: tuple[float, float]) -> Box:
    """Map a box from a space of size ``from_wh`` to one of size ``to_wh``."""
    sx, sy = _scale_factors(from_wh, to_wh)
    return Box(box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy)


def scale_point(point: Point, from_wh: tuple[float, float], to_wh: tuple[float, float]) -> Point:
    sx, sy = _scale_factors(from_wh, to_wh)
    return Point(point.x * sx, point.y * sy)


def to_pixel_box(box: Box, image_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """Round a box in image pixels to integers inside the image with x1 < x2 and y1 < y2.

    A box that rounds to zero width or height grows by one pixel, inward at the image edge.
    """
    w, h = image_wh
    if w < 1 or h < 1:
        raise ValueError(f"image_wh must be positive, got {image_wh}")
    b = clamp_box(ordered(box), (w, h))
    x1, x2 = _pixel_span(b.x1, b.x2, w)
    y1, y2 = _pixel_span(b.y1, b.y2, h)
    return x1, y1, x2, y2


def to_pixel_point(point: Point, image_wh: tuple[int, int]) -> tuple[int, int]:
    w, h = image_wh
    p = clamp_point(point, (w, h))
    return min(int(round(p.x)), w - 1), min(int(round(p.y)), h - 1)


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Intersection over union of two ``xyxy`` boxes; 0.0 when either has no area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pixel_span(lo: float, hi: float, limit: int) -> tuple[int, int]:
    a, b = int(round(lo)), int(round(hi))
    if b <= a:
        b = a + 1
        if b > limit:
            a, b = limit - 1, limit
    return a, b


def _scale_factors(from_wh: tuple[float, float], to_wh: tuple[float, float]) -> tuple[float, float]:
    if from_wh[0] <= 0 or from_wh[1] <= 0:
        raise ValueError(f"from_wh must be positive, got {from_wh}")
    return to_wh[0] / from_wh[0], to_wh[1] / from_wh[1]


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v
