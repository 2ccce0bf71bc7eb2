"""Map boxes and points from a model's coordinate space to original-image pixels. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from app.grounding.families import CoordinateSystem, Family
from app.grounding.geometry import scale_box, scale_point, to_pixel_box, to_pixel_point
from app.grounding.parsing import ParsedAnswer

RELATIVE_GRID_WH = (1000, 1000)


@dataclass(frozen=True)
class MappedAnswer:
    """Boxes and points in original-image pixels; spans index the raw answer text."""

    boxes: tuple[tuple[int, int, int, int], ...]
    box_labels: tuple[str | None, ...]
    box_spans: tuple[tuple[int, int], ...]
    points: tuple[tuple[int, int], ...]
    point_labels: tuple[str | None, ...]


def model_space_wh(family: Family, input_wh: tuple[int, int] | None) -> tuple[int, int]:
    """The size of the space the family answers in: the 0-1000 grid, or the resized input."""
    if family.coordinates is CoordinateSystem.RELATIVE_1000:
        return RELATIVE_GRID_WH
    if input_wh is None:
        raise ValueError(f"{family.display_name} answers in pixels of the resized input: input_wh is required")
    if input_wh[0] < 1 or input_wh[1] < 1:
        raise ValueError(f"input_wh must be positive, got {input_wh}")
    return input_wh


def map_answer(
    answer: ParsedAnswer, family: Family, image_wh: tuple[int, int], input_wh: tuple[int, int] | None
) -> MappedAnswer:
    """Every box of ``answer`` as integer pixels of the original image, clamped, with x1 < x2 and y1 < y2."""
    space_wh = model_space_wh(family, input_wh)
    boxes = tuple(to_pixel_box(scale_box(b.box, space_wh, image_wh), image_wh) for b in answer.boxes)
    points = tuple(to_pixel_point(scale_point(p.point, space_wh, image_wh), image_wh) for p in answer.points)
    return MappedAnswer(
        boxes=boxes,
        box_labels=tuple(b.label for b in answer.boxes),
        box_spans=tuple(b.span for b in answer.boxes),
        points=points,
        point_labels=tuple(p.label for p in answer.points),
    )
