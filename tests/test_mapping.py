"""Coordinate mapping: boxes land in original-image pixels, using the processor's real resize."""

from __future__ import annotations

import random

import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor

from app.grounding.families import Family
from app.grounding.geometry import Box, scale_box, to_pixel_box
from app.grounding.mapping import map_answer, model_space_wh
from app.grounding.parsing import parse_answer

PATCH = 14


def processor_input_wh(image_wh, min_pixels, max_pixels):
    """The size Qwen2.5-VL's own image processor resizes an image of ``image_wh`` to."""
    processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    out = processor(images=[Image.new("RGB", image_wh)], return_tensors="pt")
    _, grid_h, grid_w = out["image_grid_thw"][0].tolist()
    assert out["pixel_values"].shape[0] == grid_h * grid_w  # one row per patch: the grid is what the model saw
    return grid_w * PATCH, grid_h * PATCH


def random_cases(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        image_wh = (rng.randint(1, 3000), rng.randint(1, 3000))
        if max(image_wh) / min(image_wh) > 150:
            continue
        min_pixels = rng.choice([56 * 56, 256 * 28 * 28, 640 * 28 * 28])
        max_pixels = rng.choice([64 * 28 * 28, 1280 * 28 * 28, 4096 * 28 * 28])
        yield image_wh, min(min_pixels, max_pixels), max_pixels, rng


def test_round_trip_through_the_processors_resize_is_within_one_pixel():
    checked = 0
    for image_wh, min_pixels, max_pixels, rng in random_cases(150, seed=7):
        input_wh = processor_input_wh(image_wh, min_pixels, max_pixels)
        w, h = image_wh
        for _ in range(3):
            xs = sorted(rng.uniform(0, w) for _ in range(2))
            ys = sorted(rng.uniform(0, h) for _ in range(2))
            truth = Box(xs[0], ys[0], xs[1], ys[1])
            # Where a perfect model sees the box in the resized input, as JSON text in its dialect ...
            seen = scale_box(truth, image_wh, input_wh)
            text = f'[{{"bbox_2d": [{seen.x1!r}, {seen.y1!r}, {seen.x2!r}, {seen.y2!r}], "label": "t"}}]'
            # ... parsed and mapped back to the original image.
            mapped = map_answer(parse_answer(text, Family.QWEN2_5_VL, input_wh), Family.QWEN2_5_VL, image_wh, input_wh)
            (x1, y1, x2, y2) = mapped.boxes[0]
            expected = to_pixel_box(truth, image_wh)
            assert max(abs(a - b) for a, b in zip((x1, y1, x2, y2), expected, strict=True)) <= 1, (image_wh, input_wh)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        checked += 1
    assert checked >= 125  # every case but the few the processor refuses


def test_integer_answers_map_within_half_an_input_pixel():
    """The model answers integers: the error is what one input pixel is worth, and no more."""
    for image_wh, min_pixels, max_pixels, rng in random_cases(100, seed=11):
        input_wh = processor_input_wh(image_wh, min_pixels, max_pixels)
        answer = [rng.randint(0, input_wh[0]), rng.randint(0, input_wh[1])]
        answer += [rng.randint(answer[0], input_wh[0]), rng.randint(answer[1], input_wh[1])]
        text = f'{{"bbox_2d": {answer}}}'
        box = map_answer(parse_answer(text, Family.QWEN2_5_VL, input_wh), Family.QWEN2_5_VL, image_wh, input_wh).boxes[
            0
        ]
        sx, sy = image_wh[0] / input_wh[0], image_wh[1] / input_wh[1]
        exact = (answer[0] * sx, answer[1] * sy, answer[2] * sx, answer[3] * sy)
        assert all(abs(a - b) <= 1 for a, b in zip(box, exact, strict=True)) or (
            box[2] - box[0] == 1 or box[3] - box[1] == 1  # zero-area answers grow to one pixel
        )


@pytest.mark.parametrize(
    ("family", "text", "image_wh", "input_wh", "expected"),
    [
        (Family.QWEN2_5_VL, '{"bbox_2d": [0, 0, 644, 476]}', (1280, 960), (644, 476), (0, 0, 1280, 960)),  # full
        (Family.QWEN2_5_VL, '{"bbox_2d": [322, 238, 644, 476]}', (1280, 960), (644, 476), (640, 480, 1280, 960)),
        # bottom-right quarter
        (Family.QWEN2_5_VL, '{"bbox_2d": [700, 500, 900, 900]}', (1280, 960), (644, 476), (1279, 959, 1280, 960)),
        # wholly past the resized edge: clamped, still a valid pixel box
        (Family.QWEN3_VL, '{"bbox_2d": [500, 500, 1000, 1000]}', (800, 600), None, (400, 300, 800, 600)),
        (Family.QWEN2_VL, "<|box_start|>(0,0),(250,500)<|box_end|>", (400, 200), None, (0, 0, 100, 100)),
        (Family.QWEN_VL, "<box>(100,100),(200,200)</box>", (10, 10), None, (1, 1, 2, 2)),
        (Family.QWEN2_5_VL, '{"bbox_2d": [10, 10, 10, 10]}', (1, 1), (28, 28), (0, 0, 1, 1)),  # 1x1 image
        (Family.QWEN2_5_VL, '{"bbox_2d": [0, 0, 28, 2996]}', (10, 3000), (28, 2996), (0, 0, 10, 3000)),  # 10x3000
    ],
)
def test_mapping_table(family, text, image_wh, input_wh, expected):
    mapped = map_answer(parse_answer(text, family, input_wh), family, image_wh, input_wh)
    assert mapped.boxes == (expected,)


def test_qwen2_5_vl_needs_the_input_size():
    with pytest.raises(ValueError, match="input_wh is required"):
        model_space_wh(Family.QWEN2_5_VL, None)
