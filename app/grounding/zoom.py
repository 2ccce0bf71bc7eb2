"""Large images: which mode applies, where to zoom in, and which zoomed answers confirm a candidate. Pure.

A whole-image pass on a huge image sees every object small; the model still answers something,
and every tile of a tile search answers something too, even where nothing is. So a candidate box
(from the whole-image pass, or from a tile) is kept only when a crop centred on it, grounded again,
gives back a box that agrees with it: a label that names an asked phrase, over the same place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.grounding.geometry import iou

MODES = ("off", "refine", "tiles")
# A zoom crop is the candidate box grown by this much of its size on every side...
ZOOM_MARGIN = 1.0
# ... and at least this share of TILE_SIZE on a side, so a tiny candidate still shows its surroundings.
ZOOM_MIN_FRACTION = 0.5
# A refined box confirms its candidate when they overlap at least this much (IoU, full-image pixels).
CONFIRM_IOU = 0.3
# Most candidates zoomed into per request (the best-scored first).
MAX_CANDIDATES = 12

_ARTICLES = re.compile(r"^(the|a|an)\s+")
_SPACES = re.compile(r"\s+")


def resolve_mode(setting: str, tiling: bool | None) -> str:
    """The large-image mode of one request: LARGE_IMAGE_MODE, unless the request's ``tiling`` says otherwise
    (true: ``tiles``; false: no tiles, so ``tiles`` becomes ``refine``)."""
    if setting not in MODES:
        raise ValueError(f"large-image mode must be one of {MODES}, got {setting!r}")
    if tiling is None:
        return setting
    if tiling:
        return "tiles"
    return "refine" if setting == "tiles" else setting


def zoom_window(
    box: Sequence[int], image_wh: tuple[int, int], min_side: int, margin: float = ZOOM_MARGIN
) -> tuple[int, int, int, int]:
    """A square-ish ``xyxy`` window centred on ``box``: the box plus ``margin`` of its size on every side,
    at least ``min_side`` per side, moved (not cut) to stay inside the image where it fits."""
    w, h = image_wh
    x1, y1, x2, y2 = box
    side = max(min_side, round(max(x2 - x1, y2 - y1) * (1 + 2 * margin)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return _window(cx, cy, side, w, h)


def _window(cx: float, cy: float, side: int, w: int, h: int) -> tuple[int, int, int, int]:
    x0, x1 = _span(cx, side, w)
    y0, y1 = _span(cy, side, h)
    return x0, y0, x1, y1


def _span(centre: float, side: int, length: int) -> tuple[int, int]:
    if side >= length:
        return 0, length
    start = min(max(round(centre - side / 2), 0), length - side)
    return start, start + side


def normalised(text: str) -> str:
    """Lower case, single spaces, no leading article, no Chinese possessive 的: 'The  Red circle' -> 'red circle'."""
    text = _SPACES.sub(" ", text.strip().lower()).replace("的", "")
    return _ARTICLES.sub("", text)


def label_agrees(label: str, phrases: Sequence[str]) -> bool:
    """Whether a box's label names one of the asked phrases (either contains the other, once normalised)."""
    mine = normalised(label)
    return bool(mine) and any(mine in normalised(p) or normalised(p) in mine for p in phrases if normalised(p))


def confirming_box(
    candidate: Sequence[int],
    boxes: Sequence[Sequence[int]],
    labels: Sequence[str],
    phrases: Sequence[str],
    min_iou: float = CONFIRM_IOU,
) -> int | None:
    """The index of the zoomed answer's box that confirms ``candidate``: its label agrees with an asked phrase
    and it overlaps the candidate by ``min_iou`` or more (the best overlap wins); None when none does."""
    best, best_iou = None, min_iou
    for index, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        overlap = iou(candidate, box)
        if label_agrees(label, phrases) and overlap >= best_iou:
            best, best_iou = index, overlap
    return best
