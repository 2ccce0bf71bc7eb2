"""The demo model's answers: Qwen2.5-VL JSON ``bbox_2d`` in pixels of the processor's resized input. Pure.

The inverse of what the engine does with an answer (``app.grounding.mapping``): a box in original pixels is
scaled by ``input_wh / image_wh``, where ``input_wh`` is the processor's real resize for that image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def to_input_box(
    box: tuple[int, int, int, int], image_wh: tuple[int, int], input_wh: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``box`` (xyxy, original pixels) in integer pixels of the resized input, clamped to it."""
    if min(image_wh) < 1 or min(input_wh) < 1:
        raise ValueError(f"image_wh and input_wh must be positive, got {image_wh} and {input_wh}")
    sx, sy = input_wh[0] / image_wh[0], input_wh[1] / image_wh[1]
    x1, y1, x2, y2 = box
    return (
        min(max(round(x1 * sx), 0), input_wh[0]),
        min(max(round(y1 * sy), 0), input_wh[1]),
        min(max(round(x2 * sx), 0), input_wh[0]),
        min(max(round(y2 * sy), 0), input_wh[1]),
    )


def answer_text(items: Sequence[tuple[tuple[int, int, int, int], str]]) -> str:
    """``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, ...]``, as Qwen2.5-VL answers (without a code fence)."""
    return json.dumps([{"bbox_2d": [int(v) for v in box], "label": label} for box, label in items], ensure_ascii=False)
