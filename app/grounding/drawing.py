"""Draw boxes, points and labels onto a copy of an image. Pure: the input image is never changed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from app.grounding.fonts import label_font
from app.grounding.result import GroundingResult
from app.grounding.tiling import rescale_result

PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (170, 110, 40), (128, 0, 0), (255, 225, 25), (0, 0, 128), (128, 128, 0),
)  # fmt: skip


def colour_for(label: str | None) -> tuple[int, int, int]:
    """A stable colour per label, the same in every image and every run."""
    return PALETTE[zlib.crc32((label or "").encode("utf-8")) % len(PALETTE)]


def line_width(image_wh: tuple[int, int]) -> int:
    return max(2, round(min(image_wh) / 200))


def draw_result(
    image: Image.Image,
    boxes: Sequence[Sequence[int]],
    labels: Sequence[str | None],
    scores: Sequence[float | None] | None = None,
    points: Sequence[Sequence[int]] = (),
    point_labels: Sequence[str | None] = (),
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
) -> Image.Image:
    """A new RGB image of the same size with each box outlined and labelled in its label's colour."""
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(canvas)
    width = line_width(canvas.size)
    if font is None:
        font = ImageFont.load_default(max(12, min(canvas.size) // 30))
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        colour = colour_for(label)
        x1, y1, x2, y2 = box
        if min(x2 - x1, y2 - y1) <= 2 * width:  # too small for an outline: fill it
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
        else:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=width)
        caption = _caption(label, None if scores is None else scores[i])
        if caption:
            _draw_caption(draw, canvas.size, (x1, y1), caption, colour, font)
    for point, label in zip(points, point_labels, strict=False):
        colour = colour_for(label)
        x, y = point
        r = width * 2
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255))
    return canvas


def _caption(label: str | None, score: float | None) -> str:
    parts = [label or ""]
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(p for p in parts if p)


def _draw_caption(draw, image_wh, anchor, caption, colour, font) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
    text_w, text_h = right - left, bottom - top
    pad = 2
    x = min(max(anchor[0], 0), max(image_wh[0] - text_w - 2 * pad, 0))
    y = anchor[1] - text_h - 2 * pad
    if y < 0:  # no room above the box: put the caption just inside it
        y = anchor[1]
    draw.rectangle((x, y, x + text_w + 2 * pad, y + text_h + 2 * pad), fill=colour)
    draw.text((x + pad - left, y + pad - top), caption, fill=_readable_on(colour), font=font)


def _readable_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = colour
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def annotate(image: Image.Image, result: GroundingResult) -> Image.Image:
    """``result`` drawn on a copy of ``image``: the image it was grounded on, or a resized copy of it (the
    boxes are scaled to it). Labels are sized to the image."""
    if list(image.size) != list(result.image_size):
        result = rescale_result(result, image.size)
    font = label_font(max(12, min(image.size) // 30))
    return draw_result(image, result.boxes, result.labels, result.scores, result.points, result.point_labels, font)
