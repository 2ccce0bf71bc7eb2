"""Continuous batching: rows that join a running batch at different steps decode exactly as alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.base import GroundingRequest
from app.engine.continuous import ContinuousDecoder, unsupported_reason
from app.engine.decode_loop import Group, run_decode_loop

PHRASES = ["the red square", "all blue circles", "左上角的绿色三角形", "the cat"]


def scene(i: int) -> GroundingRequest:
    rng = np.random.default_rng(100 + i)
    h, w = int(rng.integers(40, 200)), int(rng.integers(40, 260))
    return GroundingRequest(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), (PHRASES[i % 4],))


def alone(engine, request: GroundingRequest, limit: int) -> tuple[list[int], list[float]]:
    """``generate``'s greedy tokens for this request by itself, up to its first stop token."""
    ids, logprobs = engine.runner.generate_ids(dict(engine.prepare([request]).inputs), limit)
    ids, logprobs = ids[0].tolist(), logprobs[0].tolist()
    stop = next((i + 1 for i, token in enumerate(ids) if token in engine._stop_ids), len(ids))
    return ids[:stop], logprobs[:stop]


def decoder_for(engine) -> ContinuousDecoder:
    return ContinuousDecoder(engine.runner.model, engine._stop_ids, engine.processor.tokenizer.pad_token_id)


def test_the_tiny_qwen25_vl_can_be_decoded_continuously(tiny_engine):
    assert unsupported_reason(tiny_engine.runner.model) is None
    assert tiny_engine.continuous


def test_rows_joining_at_different_steps_get_the_tokens_they_get_alone(tiny_engine):
    requests = [scene(i) for i in range(10)]
    limits = [24, 24, 3, 24, 24, 1, 24, 12, 24, 24]
    groups = [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]  # prefilled together, then joining the running batch
    decoder = decoder_for(tiny_engine)
    done = {}
    for steps_before_next, group in enumerate(groups):
        inputs = dict(tiny_engine.merge([tiny_engine.prepare([requests[i]]) for i in group]).inputs)
        done.update((row.key, row) for row in decoder.admit(inputs, group, [limits[i] for i in group]))
        for _ in range(2 + steps_before_next):
            done.update((row.key, row) for row in decoder.step())
    assert decoder.size > 1, "rows of several groups were decoding together"
    while decoder.size:
        done.update((row.key, row) for row in decoder.step())
    for i, request in enumerate(requests):
        ids, logprobs = alone(tiny_engine, request, limits[i])
        assert done[i].token_ids == ids, f"request {i}"
        assert done[i].logprobs == pytest.approx(logprobs, abs=1e-4)
    assert len(done[5].token_ids) == 1 and len(done[2].token_ids) == 3, "a row leaves at its own limit"
    assert max(row.mean_rows for row in done.values()) > 3


def test_the_running_batch_keeps_only_columns_a_row_still_uses(tiny_engine):
    decoder = decoder_for(tiny_engine)
    big = dict(tiny_engine.prepare([GroundingRequest(Image.new("RGB", (220, 220), "red"), ("a",))]).inputs)
    small = dict(tiny_engine.prepare([GroundingRequest(Image.new("RGB", (40, 40), "blue"), ("b",))]).inputs)
    decoder.admit(big, ["big"], [4])
    decoder.admit(small, ["small"], [40])
    length_with_both = decoder._mask.shape[1]
    while decoder.size == 2:
        decoder.step()
    assert decoder._mask.shape[1] < length_with_both, "the finished long prompt's columns were dropped"
    assert decoder._mask.all(), "no padding is left in a batch of one"
    assert decoder._cache.get_seq_length() == decoder._mask.shape[1]


def test_a_failed_step_fails_the_decoding_rows_and_the_loop_goes_on(tiny_engine, monkeypatch):
    decoder = decoder_for(tiny_engine)
    inputs = dict(tiny_engine.prepare([scene(0), scene(1)]).inputs)
    arrivals = [[Group(inputs, ["a", "b"], [30, 30])], [], None]
    outcomes = {}
    real_step = decoder.step

    def step_once_then_fail():
        if "failed" not in outcomes:
            outcomes["failed"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step()

    monkeypatch.setattr(decoder, "step", step_once_then_fail)
    run_decode_loop(decoder, lambda block: arrivals.pop(0), lambda group: None, outcomes.__setitem__)
    assert isinstance(outcomes["a"], Exception) and outcomes["a"].code == "out_of_memory"
    assert decoder.size == 0


def test_an_unverified_model_type_falls_back_to_one_generate_per_batch(tiny_engine, monkeypatch):
    from app.engine import continuous
    from app.service.scheduler import BatchScheduler

    monkeypatch.setattr(continuous, "VERIFIED_MODEL_TYPES", frozenset({"qwen2_vl"}))
    reason = unsupported_reason(tiny_engine.runner.model)
    assert "qwen2_5_vl" in reason
    monkeypatch.setattr(tiny_engine.runner, "continuous_unsupported", reason)
    scheduler = BatchScheduler(tiny_engine, max_batch_size=8)
    try:
        assert not scheduler.continuous
        assert scheduler.ground(scene(0)).text == tiny_engine.ground([scene(0)])[0].text
    finally:
        scheduler.stop()


@pytest.fixture(scope="module")
def demo_engine():
    from app.engine.transformers_engine import TransformersEngine
    from app.settings import DEMO_MODEL_DIR, load_settings

    return TransformersEngine.load(load_settings(model_path=str(DEMO_MODEL_DIR), device="cpu", max_new_tokens=64))


def test_rows_that_end_at_eos_leave_early_with_generates_tokens(demo_engine):
    """The bundled demo model answers its scenes and stops: the stop path, against ``generate``."""
    from tools.demo_model.evaluation import fresh_cases

    requests = [GroundingRequest(case.image, (case.phrase,)) for case in fresh_cases(6)]
    decoder = decoder_for(demo_engine)
    done = {}
    for i, request in enumerate(requests):  # one joins every two steps
        done.update((row.key, row) for row in decoder.admit(dict(demo_engine.prepare([request]).inputs), [i], [64]))
        for _ in range(2):
            done.update((row.key, row) for row in decoder.step())
    while decoder.size:
        done.update((row.key, row) for row in decoder.step())
    for i, request in enumerate(requests):
        assert done[i].token_ids == alone(demo_engine, request, 64)[0], f"scene {i}"
    assert all(done[i].token_ids[-1] in demo_engine._stop_ids for i in done), "every answer ended at EOS"
    assert all(len(row.token_ids) < 64 for row in done.values())
