"""Large and odd images: downscale, pad, tile, map back, merge with NMS. Pure functions + torchvision."""

from __future__ import annotations

import pytest

from app.engine.nms import nms_keep
from app.grounding.result import GroundingResult
from app.grounding.tiling import (
    combine,
    crop_result,
    downscaled_wh,
    padded_wh,
    rescale_result,
    shift_result,
    tile_windows,
)


def result(boxes, image_wh, labels=None, scores=None):
    n = len(boxes)
    return GroundingResult(
        boxes=[list(b) for b in boxes], labels=labels or ["x"] * n, scores=scores or [0.9] * n, points=[],
        point_labels=[], text="", image_size=list(image_wh), input_size=None, model="m", latency_ms=1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("image_wh", "max_side", "expected"),
    [
        ((1000, 800), 4096, None),  # fits
        ((8192, 4096), 4096, (4096, 2048)),  # halved
        ((5000, 60), 4096, (4096, 49)),  # a long strip keeps its aspect
    ],
)
def test_downscaled_wh(image_wh, max_side, expected):
    assert downscaled_wh(image_wh, max_side) == expected


@pytest.mark.parametrize(
    ("image_wh", "expected"),
    [((640, 480), None), ((10, 3000), (20, 3000)), ((4000, 12), (4000, 27)), ((1, 1), None)],
)
def test_padded_wh_brings_the_aspect_ratio_within_the_processors_limit(image_wh, expected):
    assert padded_wh(image_wh) == expected


def test_rescale_result_maps_boxes_back_to_the_original():
    small = result([(10, 20, 30, 40)], (100, 50))
    assert rescale_result(small, (1000, 500)).boxes == [[100, 200, 300, 400]]
    assert rescale_result(small, (1000, 500)).image_size == [1000, 500]


def test_crop_result_drops_boxes_in_the_padding_and_clamps_the_rest():
    padded = result([(0, 0, 15, 100), (12, 50, 20, 60)], (20, 3000))
    cropped = crop_result(padded, (10, 3000))
    assert cropped.boxes == [[0, 0, 10, 100]] and cropped.image_size == [10, 3000]


@pytest.mark.parametrize(("image_wh", "tile"), [((3000, 2000), 1024), ((1024, 700), 1024), ((5000, 300), 1024)])
def test_tiles_cover_the_image_and_overlap(image_wh, tile):
    windows = tile_windows(image_wh, tile)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= image_wh[0] and 0 <= y0 < y1 <= image_wh[1]
        assert x1 - x0 <= tile and y1 - y0 <= tile
    for x in range(0, image_wh[0], 37):
        for y in range(0, image_wh[1], 37):
            assert any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in windows), (x, y)
    if len(windows) > 1:  # neighbours overlap, so an object on a seam is whole in some tile
        xs = sorted({w[0] for w in windows})
        assert all(b - a < tile for a, b in zip(xs, xs[1:], strict=False))


def test_tiled_results_are_shifted_and_merged_with_nms():
    whole = result([(100, 100, 300, 300)], (3000, 2000), scores=[0.6])
    tile = shift_result(result([(90, 95, 290, 305)], (1024, 1024), scores=[0.9]), (10, 5, 1034, 1029), (3000, 2000))
    other = result([(2500, 1500, 2600, 1600)], (3000, 2000), labels=["y"])
    parts = [whole, tile, other]
    keep = nms_keep([b for r in parts for b in r.boxes], [s for r in parts for s in r.scores],
                    [label for r in parts for label in r.labels])  # fmt: skip
    merged = combine(parts, keep, (3000, 2000))
    assert merged.boxes == [[100, 100, 300, 310], [2500, 1500, 2600, 1600]]  # the duplicate kept its best score
    assert merged.scores == [0.9, 0.9] and merged.labels == ["x", "y"]


def test_nms_never_merges_different_labels():
    assert nms_keep([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], ["cat", "dog"]) == [0, 1]
