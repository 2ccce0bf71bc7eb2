"""Large images: downscale for the model, tile huge ones, and map results back. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from app.grounding.geometry import Box, Point, scale_box, scale_point, to_pixel_box, to_pixel_point
from app.grounding.result import GroundingResult

TILE_OVERLAP = 0.2
# Qwen's processors refuse images more than 200 times longer than wide; pad well before that.
MAX_ASPECT = 150


@dataclass(frozen=True)
class Fit:
    """How large an image is kept for the model: the longer side at most ``max_side`` and, where given,
    the area at most ``max_area`` (the processor shrinks anything larger than its MAX_PIXELS anyway)."""

    max_side: int
    max_area: int | None = None

    def wh(self, image_wh: tuple[int, int]) -> tuple[int, int] | None:
        """The size to shrink an image to; None if it already fits."""
        w, h = image_wh
        scale = self.max_side / max(w, h)
        if self.max_area is not None:
            scale = min(scale, math.sqrt(self.max_area / (w * h)))
        if scale >= 1:
            return None
        return max(1, round(w * scale)), max(1, round(h * scale))


def downscaled_wh(image_wh: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """The size to shrink an image to so its longer side is ``max_side``; None if it already fits."""
    w, h = image_wh
    if max(w, h) <= max_side:
        return None
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def padded_wh(image_wh: tuple[int, int], max_aspect: int = MAX_ASPECT) -> tuple[int, int] | None:
    """The canvas an extreme strip (e.g. 10x3000) is padded to so its aspect ratio is ``max_aspect``."""
    w, h = image_wh
    if max(w, h) <= max_aspect * min(w, h):
        return None
    return (max(w, math.ceil(h / max_aspect)), max(h, math.ceil(w / max_aspect)))


def crop_result(result: GroundingResult, image_wh: tuple[int, int]) -> GroundingResult:
    """A result on a padded canvas (image at its top-left) cut back to the image: boxes clamped, those
    wholly in the padding dropped."""
    w, h = image_wh
    keep = [i for i, b in enumerate(result.boxes) if b[0] < w and b[1] < h]
    return replace(
        result,
        boxes=[list(to_pixel_box(Box(*result.boxes[i]), image_wh)) for i in keep],
        labels=[result.labels[i] for i in keep],
        scores=[result.scores[i] for i in keep],
        points=[list(to_pixel_point(Point(*p), image_wh)) for p in result.points],
        image_size=[w, h],
    )


def tile_windows(
    image_wh: tuple[int, int], tile: int, overlap: float = TILE_OVERLAP
) -> list[tuple[int, int, int, int]]:
    """Overlapping ``xyxy`` windows of at most ``tile`` pixels covering the image, edge to edge."""
    w, h = image_wh
    return [
        (x0, y0, min(x0 + tile, w), min(y0 + tile, h))
        for y0 in _starts(h, tile, overlap)
        for x0 in _starts(w, tile, overlap)
    ]


def rescale_result(result: GroundingResult, to_wh: tuple[int, int]) -> GroundingResult:
    """``result`` (for an image of ``result.image_size``) in pixels of an image of size ``to_wh``."""
    from_wh = (result.image_size[0], result.image_size[1])
    return replace(
        result,
        boxes=[list(to_pixel_box(scale_box(Box(*b), from_wh, to_wh), to_wh)) for b in result.boxes],
        points=[list(to_pixel_point(scale_point(Point(*p), from_wh, to_wh), to_wh)) for p in result.points],
        image_size=[to_wh[0], to_wh[1]],
    )


def shift_result(
    result: GroundingResult, window: tuple[int, int, int, int], image_wh: tuple[int, int]
) -> GroundingResult:
    """A tile's result moved to the full image: boxes and points offset by the window's corner."""
    x0, y0 = window[0], window[1]
    return replace(
        result,
        boxes=[[b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0] for b in result.boxes],
        points=[[p[0] + x0, p[1] + y0] for p in result.points],
        image_size=[image_wh[0], image_wh[1]],
    )


def combine(results: list[GroundingResult], keep: list[int], image_wh: tuple[int, int]) -> GroundingResult:
    """One result from several (already in full-image pixels), keeping the boxes at indices ``keep``."""
    boxes = [b for r in results for b in r.boxes]
    labels = [label for r in results for label in r.labels]
    scores = [s for r in results for s in r.scores]
    first = results[0]
    return replace(
        first,
        boxes=[boxes[i] for i in keep],
        labels=[labels[i] for i in keep],
        scores=[scores[i] for i in keep],
        points=[p for r in results for p in r.points],
        point_labels=[label for r in results for label in r.point_labels],
        text="\n".join(r.text for r in results),
        image_size=[image_wh[0], image_wh[1]],
        latency_ms=max(r.latency_ms for r in results),
    )


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile * (1 - overlap))) + 1
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]
