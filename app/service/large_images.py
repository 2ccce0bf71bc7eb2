"""Large images (LARGE_IMAGE_MODE): a whole-image pass, then zoom-in refinement; ``tiles`` adds a tile search.

``refine``: the whole (downscaled) image is grounded; a candidate box whose label names something
not asked is dropped; a crop around each other candidate (with a margin) is grounded again at a
higher resolution and the candidate is kept only when that answer confirms it
(``app.grounding.zoom.confirming_box``); the refined box replaces it. ``tiles``: the tiles' boxes are
candidates too, confirmed the same way, for targets too small for the whole-image pass. Boxes are then
merged with torchvision's NMS.

One large-image request holds one place in the queue: its sub-requests go to the model one after the
other, each with what is left of the request's timeout. When the caller goes away (the task is cancelled)
or the time is up, the sub-request in flight is cancelled and no further one is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from PIL import Image

from app.grounding.result import GroundingResult
from app.grounding.tiling import combine, shift_result, tile_windows
from app.grounding.zoom import MAX_CANDIDATES, ZOOM_MIN_FRACTION, confirming_box, label_agrees, zoom_window

# Grounds one (cropped) image with the request's phrases and options; boxes in that image's pixels.
GroundCrop = Callable[[Image.Image], Awaitable[GroundingResult]]
ANY_LABEL = "*"  # NMS across labels: one object is one box, whatever the zoomed answers called it


async def ground_large(image: Image.Image, phrases: tuple[str, ...], mode: str, tile_size: int,
                       ground: GroundCrop) -> GroundingResult:  # fmt: skip
    """``image`` grounded in ``mode`` (``refine`` or ``tiles``); boxes in its pixels."""
    whole = await ground(image)
    candidates = [whole]
    if mode == "tiles":
        for window in tile_windows(image.size, tile_size):
            crop = await anyio.to_thread.run_sync(image.crop, window)
            candidates.append(shift_result(await ground(crop), window, image.size))
    merged = _merged(candidates, image.size)
    named = [i for i, label in enumerate(merged.labels) if label_agrees(label, phrases)]  # others: another thing
    order = sorted(named, key=lambda i: -(merged.scores[i] or 0.0))[:MAX_CANDIDATES]
    confirmed = [whole_without_boxes(whole, image.size)]
    min_side = max(1, round(tile_size * ZOOM_MIN_FRACTION))
    for index in order:
        box = merged.boxes[index]
        window = zoom_window(box, image.size, min_side)
        crop = await anyio.to_thread.run_sync(image.crop, window)
        zoomed = shift_result(await ground(crop), window, image.size)
        pick = confirming_box(box, zoomed.boxes, zoomed.labels, phrases)
        if pick is not None:
            confirmed.append(_only(zoomed, pick))
    return _merged(confirmed, image.size)


def whole_without_boxes(result: GroundingResult, image_wh: tuple[int, int]) -> GroundingResult:
    """The whole-image answer as the head of the merged result (its text, sizes, model), holding no box."""
    return combine([result], [], image_wh)


def _only(result: GroundingResult, index: int) -> GroundingResult:
    return combine([result], [index], (result.image_size[0], result.image_size[1]))


def _merged(results: list[GroundingResult], image_wh: tuple[int, int]) -> GroundingResult:
    boxes = [b for r in results for b in r.boxes]
    scores = [s for r in results for s in r.scores]
    from app.engine.nms import nms_keep  # torchvision: imported on first use, not at the server's start

    return combine(results, nms_keep(boxes, scores, [ANY_LABEL] * len(boxes)), image_wh)
