"""The demo scenes: reproducible from their seed, and always inside the fixed domain of issue 7."""

from __future__ import annotations

import numpy as np
import pytest

from app.demo.answer_format import answer_text, to_input_box
from app.demo.scenes import (
    BACKGROUND_RANGE,
    COLOUR_JITTER,
    COLOURS,
    IMAGE_SIDE_RANGE,
    SIZE_FRACTION_RANGE,
    boxes_overlap,
    make_scene,
    phrase_for,
    pick_target,
    scene_rng,
)
from app.grounding.families import Family
from app.grounding.mapping import map_answer
from app.grounding.parsing import parse_answer

INDICES = range(300)


def test_same_seed_gives_the_same_scene():
    a, b = make_scene(scene_rng("train", 7)), make_scene(scene_rng("train", 7))
    assert a.objects == b.objects and a.background == b.background
    assert a.image.tobytes() == b.image.tobytes()


def test_streams_and_indices_give_different_scenes():
    images = {make_scene(scene_rng(split, i)).image.tobytes() for split in ("train", "eval", "test") for i in range(5)}
    assert len(images) == 15


@pytest.mark.parametrize("index", INDICES[::10])
def test_same_seed_same_target(index):
    first, second = scene_rng("eval", index), scene_rng("eval", index)
    assert pick_target(first, make_scene(first)) == pick_target(second, make_scene(second))


def test_every_scene_respects_the_domain():
    counts = set()
    for index in INDICES:
        scene = make_scene(scene_rng("train", index))
        w, h = scene.image_wh
        assert IMAGE_SIDE_RANGE[0] <= w <= IMAGE_SIDE_RANGE[1] and IMAGE_SIDE_RANGE[0] <= h <= IMAGE_SIDE_RANGE[1]
        assert all(BACKGROUND_RANGE[0] <= c <= BACKGROUND_RANGE[1] for c in scene.background)
        assert 1 <= len(scene.objects) <= 4
        counts.add(len(scene.objects))
        kinds = [(o.colour, o.shape) for o in scene.objects]
        assert len(set(kinds)) == len(kinds), "each (colour, shape) at most once"
        pixels = np.asarray(scene.image)
        for i, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert x2 - x1 == y2 - y1, "boxes are squares (the triangle's is its enclosing square)"
            side = x2 - x1
            assert SIZE_FRACTION_RANGE[0] * min(w, h) <= side <= SIZE_FRACTION_RANGE[1] * min(w, h)
            assert all(abs(c - centre) <= COLOUR_JITTER for c, centre in zip(obj.rgb, COLOURS[obj.colour], strict=True))
            assert not any(boxes_overlap(obj.box, other.box) for other in scene.objects[i + 1 :])
            # The shape is drawn in its colour at its centre and touches all four edges of its box.
            assert tuple(pixels[(y1 + y2) // 2, (x1 + x2) // 2]) == obj.rgb
            mask = np.all(pixels[y1:y2, x1:x2] == obj.rgb, axis=-1)
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any(), obj
    assert counts == {1, 2, 3, 4}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_asked_object_count(n):
    assert {len(make_scene(scene_rng("train", i), n).objects) for i in range(20)} <= set(range(1, n + 1))
    assert max(len(make_scene(scene_rng("train", i), n).objects) for i in range(20)) == n


@pytest.mark.parametrize(
    ("colour", "shape", "style", "phrase"),
    [
        ("red", "circle", "en_the", "the red circle"),  # English with article
        ("green", "square", "en", "green square"),  # English bare
        ("blue", "triangle", "zh_de", "蓝色的三角形"),  # Chinese with 的
        ("yellow", "circle", "zh", "黄色圆形"),  # Chinese bare
    ],
)
def test_phrases(colour, shape, style, phrase):
    assert phrase_for(colour, shape, style) == phrase


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("purple", "circle", "en"), "unknown target"),  # colour outside the domain
        (("red", "star", "en"), "unknown target"),  # shape outside the domain
        (("red", "circle", "fr"), "unknown phrase style"),  # style outside the domain
    ],
)
def test_bad_phrase_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        phrase_for(*args)


def test_bad_split_and_counts_raise():
    with pytest.raises(ValueError, match="split"):
        scene_rng("validation", 0)
    with pytest.raises(ValueError, match="n_objects"):
        make_scene(scene_rng("train", 0), 5)


@pytest.mark.parametrize(
    ("box", "image_wh", "input_wh", "expected"),
    [
        ((0, 0, 100, 100), (200, 200), (168, 168), (0, 0, 84, 84)),  # square downscale
        ((100, 20, 300, 60), (640, 160), (336, 84), (52, 10, 158, 32)),  # wide image, rounded
        ((10, 10, 20, 20), (160, 160), (168, 168), (10, 10, 21, 21)),  # small upscale
        ((0, 0, 640, 640), (640, 640), (168, 168), (0, 0, 168, 168)),  # whole image
    ],
)
def test_to_input_box(box, image_wh, input_wh, expected):
    assert to_input_box(box, image_wh, input_wh) == expected


@pytest.mark.parametrize("index", range(40))
def test_answer_maps_back_to_the_ground_truth_through_the_core(index):
    rng = scene_rng("eval", index)
    scene = make_scene(rng)
    target = pick_target(rng, scene)
    input_wh = (28 * int(rng.integers(3, 13)), 28 * int(rng.integers(3, 13)))
    text = answer_text([(to_input_box(target.box, scene.image_wh, input_wh), target.phrase)])
    mapped = map_answer(parse_answer(text, Family.QWEN2_5_VL, input_wh), Family.QWEN2_5_VL, scene.image_wh, input_wh)
    assert mapped.box_labels == (target.phrase,)
    # Rounding to input pixels costs at most one input pixel per edge.
    tolerance = max(scene.image_wh[0] / input_wh[0], scene.image_wh[1] / input_wh[1]) + 1
    assert all(abs(a - b) <= tolerance for a, b in zip(mapped.boxes[0], target.box, strict=True))
