"""The image cache (IMAGE_CACHE_MB): repeat questions about an image reuse its prefix's key/values, and the
answers are token for token the answers without the cache (box scores within rounding: the question's
prefill runs with other matrix shapes); bounded by bytes; counted in /metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.base import GroundingRequest
from app.engine.image_cache import ByteLru, CacheCounts, image_key
from app.engine.prefix_cache import PrefixCache
from app.engine.transformers_engine import TransformersEngine
from app.settings import load_settings


@pytest.mark.parametrize(
    ("puts", "max_bytes", "kept"),
    [
        ([("a", 4), ("b", 4)], 8, ["a", "b"]),  # both fit
        ([("a", 4), ("b", 4), ("c", 4)], 8, ["b", "c"]),  # the least recently used goes
        ([("a", 9)], 8, []),  # larger than the whole budget: not kept
        ([("a", 4), ("a", 6)], 8, ["a"]),  # a key put again replaces its entry and its size
        ([("a", 1)], 0, []),  # budget 0 keeps nothing
    ],
)
def test_byte_lru_keeps_the_most_recent_within_its_budget(puts, max_bytes, kept):
    lru = ByteLru(max_bytes)
    for key, nbytes in puts:
        lru.put(key, key.upper(), nbytes)
    assert [key for key in "abc" if lru.get(key) is not None] == kept
    assert lru.counts().bytes <= max_bytes


def test_byte_lru_a_lookup_makes_an_entry_recent_and_is_counted():
    lru = ByteLru(8)
    lru.put("a", 1, 4)
    lru.put("b", 2, 4)
    assert lru.get("a") == 1  # now "b" is the least recently used
    lru.put("c", 3, 4)
    assert lru.get("b") is None and lru.get("c") == 3
    assert lru.counts() == CacheCounts(hits=2, misses=1, entries=2, bytes=8)


def test_image_key_names_the_pixels_and_the_processor_settings():
    image = Image.new("RGB", (32, 24), (10, 20, 30))
    same = Image.new("RGB", (32, 24), (10, 20, 30))
    other = image.copy()
    other.putpixel((31, 23), (10, 20, 31))
    assert image_key(image, (3136, 50176)) == image_key(same, (3136, 50176))
    assert image_key(image, (3136, 50176)) != image_key(other, (3136, 50176))  # one pixel differs
    assert image_key(image, (3136, 50176)) != image_key(image, (3136, 1003520))  # resized differently
    assert image_key(image, (3136, 50176)) != image_key(image.convert("RGBA"), (3136, 50176))  # other mode


def _engine(checkpoint: str, cache_mb: int, own_process: bool = False) -> TransformersEngine:
    settings = load_settings(model_path=checkpoint, device="cpu", max_new_tokens=24, max_pixels=28 * 28 * 64,
                             image_cache_mb=cache_mb, model_process=own_process)  # fmt: skip
    return TransformersEngine.load(settings, own_process=own_process)


def _pictures(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(count)]


def _answers(engine: TransformersEngine, batches: list[list[GroundingRequest]]) -> list[tuple]:
    """Each batch joins the running batch together (continuous batching); text and scores of every answer."""
    answers = []
    for batch in batches:
        futures = engine.start(batch, engine.prepare(batch))
        answers += [(result.text, result.scores) for result, _ in (f.result(timeout=120) for f in futures)]
    return answers


def assert_same_answers(cached: list[tuple], uncached: list[tuple]) -> None:
    """The same text (the same tokens) for every answer, and each box score within 0.001."""
    assert [text for text, _ in cached] == [text for text, _ in uncached]
    for (_, scores), (_, expected) in zip(cached, uncached, strict=True):
        assert scores == pytest.approx(expected, abs=1e-3)


def _questions() -> list[list[GroundingRequest]]:
    a, b, c = _pictures(3)
    ask = GroundingRequest
    return [
        [ask(a, ("the red circle",)), ask(b, ("a blue square",)), ask(a, ("the cat",))],  # a twice, both new
        [ask(a, ("the dog on the left",)), ask(c, ("a tree",)), ask(b, ("the red circle",))],  # hits with a miss
        [ask(b, ("the cat", "a tree"))],  # a hit alone, two phrases
    ]


def test_cached_processing_gives_exactly_the_processor_output(tiny_checkpoint):
    a, b = _pictures(2)
    grey, wide = b.convert("L"), a.resize((300, 80))
    batch = [GroundingRequest(image, (phrase,)) for image, phrase in
             [(a, "the cat"), (grey, "a tree"), (wide, "the red circle"), (a, "the dog on the left")]]  # fmt: skip
    plain, cached = _engine(tiny_checkpoint, 0), _engine(tiny_checkpoint, 64)
    try:
        expected = plain.prepare(batch).inputs
        for _ in range(2):  # misses (a twice in one batch), then hits
            inputs = cached.prepare(batch).inputs
            assert inputs.keys() == expected.keys()
            for name in expected:
                assert torch.equal(inputs[name], expected[name]), name
        counts = cached.image_cache_counts()["processor"]
    finally:
        plain.close()
        cached.close()
    assert (counts.hits, counts.misses, counts.entries) == (5, 3, 3)


@pytest.fixture(scope="module")
def uncached(tiny_checkpoint):
    engine = _engine(tiny_checkpoint, 0)
    try:
        assert engine.image_cache_counts() == {}
        yield _answers(engine, _questions())
    finally:
        engine.close()


def test_cached_answers_are_token_for_token_the_uncached_ones(tiny_checkpoint, uncached):
    engine = _engine(tiny_checkpoint, 64)
    try:
        cached = _answers(engine, _questions())
        counts = engine.image_cache_counts()["prefix"]
    finally:
        engine.close()
    assert_same_answers(cached, uncached)
    assert len({text for text, _ in uncached}) > 3  # the tiny model's answers differ by image and phrase
    # First batch: three misses (a is looked up twice before either is stored); then a, b, b hit and c misses.
    assert (counts.hits, counts.misses, counts.entries) == (3, 4, 3)


def test_a_budget_smaller_than_one_prefix_keeps_nothing_and_answers_the_same(tiny_checkpoint, uncached):
    engine = _engine(tiny_checkpoint, 1)
    engine.runner.prefixes = PrefixCache(engine.model, max_bytes=10_000)  # one prefix here is about 60 kB
    try:
        cached = _answers(engine, _questions())
        counts = engine.image_cache_counts()["prefix"]
    finally:
        engine.close()
    assert_same_answers(cached, uncached)
    assert (counts.hits, counts.misses, counts.entries, counts.bytes) == (0, 7, 0, 0)


@pytest.mark.slow
def test_the_model_process_caches_too_and_reports_its_counts(tiny_checkpoint, uncached):
    engine = _engine(tiny_checkpoint, 64, own_process=True)
    try:
        cached = _answers(engine, _questions())
        counts = engine.image_cache_counts()["prefix"]
    finally:
        engine.close()
    assert_same_answers(cached, uncached)
    assert (counts.hits, counts.misses) == (3, 4)
