"""Drawing: a new image, pixels change along each box outline and nowhere far from it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.grounding.drawing import colour_for, draw_result, line_width
from app.grounding.fonts import label_font

BACKGROUND = (128, 128, 128)


def changed_mask(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.any(np.asarray(before.convert("RGB")) != np.asarray(after), axis=-1)


@pytest.mark.parametrize(
    ("image_wh", "box"),
    [
        ((640, 480), (100, 120, 300, 400)),  # ordinary box
        ((200, 900), (0, 0, 200, 900)),  # the whole image
        ((50, 50), (10, 10, 11, 11)),  # one-pixel box
    ],
)
def test_outline_changes_and_nothing_far_from_it(image_wh, box):
    image = Image.new("RGB", image_wh, BACKGROUND)
    original = image.copy()
    drawn = draw_result(image, [box], [None])
    assert drawn is not image and drawn.size == image.size
    assert np.array_equal(np.asarray(image), np.asarray(original)), "the input image must be untouched"
    mask = changed_mask(image, drawn)
    x1, y1, x2, y2 = box
    w = line_width(image_wh)
    # Every edge of the box has changed pixels on it.
    assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()
    assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
    # Nothing changed farther than the line width from the outline.
    ys, xs = np.nonzero(mask)
    inside = (xs >= x1 + w) & (xs < x2 - w) & (ys >= y1 + w) & (ys < y2 - w)
    outside = (xs < x1) | (xs >= x2) | (ys < y1) | (ys >= y2)
    assert not inside.any() and not outside.any()


def test_labels_are_drawn_next_to_their_box_in_the_label_colour():
    image = Image.new("RGB", (400, 300), BACKGROUND)
    font = label_font(16)
    drawn = draw_result(image, [(50, 100, 200, 250)], ["红色的圆形"], [0.87], font=font)
    mask = changed_mask(image, drawn)
    ys, xs = np.nonzero(mask)
    assert ys.min() < 100, "the caption sits above the box"
    assert ys.min() >= 100 - 40 and xs.max() < 400
    assert tuple(np.asarray(drawn)[100, 120]) == colour_for("红色的圆形")


def test_each_label_gets_its_own_stable_colour():
    assert colour_for("cat") == colour_for("cat")
    assert len({colour_for(label) for label in ["cat", "dog", "car", "vase", "tree"]}) >= 4


def test_non_rgb_input_gives_rgb_output_and_stays_untouched():
    image = Image.new("L", (80, 60), 90)
    drawn = draw_result(image, [(5, 5, 40, 40)], ["x"])
    assert drawn.mode == "RGB" and image.mode == "L" and image.getpixel((5, 5)) == 90


def test_mismatched_lengths_are_a_caller_error():
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_result(Image.new("RGB", (10, 10)), [(0, 0, 5, 5), (1, 1, 4, 4)], ["a"])
