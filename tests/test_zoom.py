"""Large images: the mode a request gets, the zoom window around a candidate, and what confirms it."""

from __future__ import annotations

import pytest

from app.grounding.zoom import confirming_box, label_agrees, normalised, resolve_mode, zoom_window


@pytest.mark.parametrize(
    ("setting", "tiling", "expected"),
    [
        ("refine", None, "refine"),  # the server's mode
        ("off", None, "off"),
        ("refine", True, "tiles"),  # tiling=true asks for tiles
        ("off", True, "tiles"),
        ("tiles", False, "refine"),  # tiling=false: no tiles, still refined
        ("off", False, "off"),  # ... but never more than the server does
        ("refine", False, "refine"),  # the UI's unticked box: the server's mode
    ],
)
def test_resolve_mode(setting, tiling, expected):
    assert resolve_mode(setting, tiling) == expected


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="one of"):
        resolve_mode("zoom", None)


@pytest.mark.parametrize(
    ("box", "image_wh", "min_side", "expected"),
    [
        ((1000, 1000, 1100, 1100), (4000, 3000), 100, (900, 900, 1200, 1200)),  # 3x the box, centred
        ((1000, 1000, 1010, 1010), (4000, 3000), 512, (749, 749, 1261, 1261)),  # a tiny box: min_side
        ((0, 0, 100, 100), (4000, 3000), 100, (0, 0, 300, 300)),  # at the corner: moved inside, not cut
        ((3900, 2900, 4000, 3000), (4000, 3000), 100, (3700, 2700, 4000, 3000)),  # the far corner
        ((100, 100, 900, 200), (1000, 500), 100, (0, 0, 1000, 500)),  # larger than the image: all of it
    ],
)
def test_zoom_window(box, image_wh, min_side, expected):
    assert zoom_window(box, image_wh, min_side) == expected


@pytest.mark.parametrize(
    ("label", "phrases", "agrees"),
    [
        ("the red circle", ["the red circle"], True),  # the phrase itself
        ("red circle", ["The  Red Circle"], True),  # case, spaces and the article do not matter
        ("红色圆形", ["红色的圆形"], True),  # the possessive 的 does not matter
        ("the blue square", ["the red circle"], False),  # another shape: the box is on the wrong thing
        ("person", ["the person on the left"], True),  # a shorter label inside the phrase
        ("blue square", ["the red circle", "the blue square"], True),  # any asked phrase
        ("", ["the red circle"], False),  # no label
    ],
)
def test_label_agrees(label, phrases, agrees):
    assert label_agrees(label, phrases) is agrees


def test_normalised():
    assert normalised("  The Red   circle ") == "red circle"


@pytest.mark.parametrize(
    ("boxes", "labels", "expected"),
    [
        ([[100, 100, 200, 200]], ["the red circle"], 0),  # the same place, the asked label
        ([[100, 100, 200, 200]], ["the blue square"], None),  # the same place, another thing
        ([[500, 500, 600, 600]], ["the red circle"], None),  # the asked label somewhere else
        ([[90, 90, 190, 190], [100, 100, 200, 200]], ["red circle", "red circle"], 1),  # the best overlap
        ([], [], None),  # the zoomed answer found nothing
    ],
)
def test_confirming_box(boxes, labels, expected):
    assert confirming_box([100, 100, 200, 200], boxes, labels, ["the red circle"]) == expected
