"""The batching scheduler: each caller its own answer, real batches, backpressure, timeouts."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from app.engine.base import GroundingRequest
from app.errors import QueueFull, RequestTimeout, ShuttingDown
from app.service.scheduler import BatchScheduler

PHRASES = ["the red circle", "蓝色的正方形", "all traffic lights", "the white vase", "cup", "dog", "红色圆形", "car"]


class Recorder:
    def __init__(self):
        self.sizes: list[int] = []
        self.depths: list[int] = []
        self.decode_rows: list[float] = []
        self.lock = threading.Lock()

    def batch_done(self, size, queue_seconds, model_seconds):
        with self.lock:
            self.sizes.append(size)

    def rows_decoding(self, mean_rows):
        with self.lock:
            self.decode_rows.append(mean_rows)

    def queue_depth(self, depth):
        self.depths.append(depth)


def request(i: int, **kwargs) -> GroundingRequest:
    rng = np.random.default_rng(i)
    w, h = 40 + 17 * (i % 9), 40 + 23 * (i % 7)
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return GroundingRequest(image, (PHRASES[i % len(PHRASES)],), **kwargs)


def test_32_concurrent_requests_each_get_their_own_answer(tiny_engine):
    requests = [request(i) for i in range(32)]
    alone = [tiny_engine.ground([r])[0].text for r in requests]
    recorder = Recorder()
    scheduler = BatchScheduler(tiny_engine, max_batch_size=8, max_batch_wait_ms=50, observer=recorder)
    try:
        with ThreadPoolExecutor(32) as pool:
            together = list(pool.map(lambda r: scheduler.ground(r).text, requests))
    finally:
        scheduler.stop()
    assert together == alone
    assert len(set(alone)) > 16, "the tiny model answers differently for different requests"
    assert max(recorder.sizes) > 1, "concurrent requests were batched"
    assert sum(recorder.sizes) == 32


def test_without_continuous_batching_requests_that_arrive_while_the_model_is_busy_go_in_one_full_batch(tiny_engine):
    """Batches are formed when the model is free, not closed early while it generates."""
    recorder = Recorder()
    scheduler = BatchScheduler(tiny_engine, max_batch_size=8, max_batch_wait_ms=5, observer=recorder, continuous=False)
    try:
        first = scheduler.submit(request(0, max_new_tokens=200))
        time.sleep(0.05)  # the first request is in the model now
        later = []
        for i in range(1, 9):
            later.append(scheduler.submit(request(i)))
            time.sleep(0.01)  # arrivals spread over longer than max_batch_wait_ms
        first.result(timeout=120)
        assert all(f.result(timeout=120).image_size for f in later)
    finally:
        scheduler.stop()
    assert recorder.sizes == [1, 8], recorder.sizes


def test_requests_that_arrive_while_one_decodes_join_it_and_leave_when_done(tiny_engine):
    """Continuous batching: short requests do not wait for a long one that started before them."""
    recorder = Recorder()
    scheduler = BatchScheduler(tiny_engine, max_batch_size=8, max_batch_wait_ms=5, observer=recorder)
    assert scheduler.continuous
    try:
        long = scheduler.submit(request(0, max_new_tokens=300))
        time.sleep(0.05)  # the long request is decoding now
        short = [scheduler.submit(request(i, max_new_tokens=4)) for i in range(1, 4)]
        short_results = [f.result(timeout=120) for f in short]
        assert not long.done(), "the short requests were answered while the long one still decoded"
        long_result = long.result(timeout=120)
    finally:
        scheduler.stop()
    assert len(tiny_engine.processor.tokenizer(long_result.text)["input_ids"]) > 100, "no early stop: it was long"
    alone = [tiny_engine.ground([request(i, max_new_tokens=4)])[0].text for i in range(1, 4)]
    assert [r.text for r in short_results] == alone, "each got its own answer, as when sent alone"
    assert max(recorder.decode_rows) > 1, "the short requests decoded in the same steps as the long one"
    assert sum(recorder.sizes) == 4


def test_batch_size_one_is_the_naive_server(tiny_engine):
    recorder = Recorder()
    scheduler = BatchScheduler(tiny_engine, max_batch_size=1, observer=recorder)
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(scheduler.ground, [request(i) for i in range(6)]))
    finally:
        scheduler.stop()
    assert recorder.sizes == [1] * 6


def test_full_queue_refuses_at_once_and_every_accepted_request_completes(tiny_engine):
    scheduler = BatchScheduler(tiny_engine, max_batch_size=1, max_queue=2)
    accepted, refused = [], []
    try:
        for i in range(30):
            try:
                accepted.append(scheduler.submit(request(i, max_new_tokens=24)))
            except QueueFull as exc:
                refused.append(exc)
        results = [f.result(timeout=120) for f in accepted]
    finally:
        scheduler.stop()
    assert refused, "a queue of 2 cannot take 30 requests at once"
    assert refused[0].status == 503 and refused[0].code == "busy" and refused[0].retry_after_s >= 1
    assert len(results) == len(accepted) and all(r.image_size for r in results)


def test_a_request_that_passes_its_timeout_gets_a_timeout_error(tiny_engine):
    scheduler = BatchScheduler(tiny_engine, max_batch_size=1, request_timeout_s=0.001)
    try:
        with pytest.raises(RequestTimeout) as info:
            scheduler.ground(request(1, max_new_tokens=200))
    finally:
        scheduler.stop()
    assert info.value.status == 504 and info.value.code == "timeout"


def test_one_bad_request_does_not_fail_its_batch_mates(tiny_engine):
    scheduler = BatchScheduler(tiny_engine, max_batch_size=8, max_batch_wait_ms=200)
    try:
        good = [scheduler.submit(request(i)) for i in range(3)]
        bad = scheduler.submit(request(9, prompt_template="no placeholder"))
        assert all(f.result(timeout=60).image_size for f in good)
        with pytest.raises(ValueError, match="placeholder"):
            bad.result(timeout=60)
    finally:
        scheduler.stop()


def test_stop_answers_what_is_still_queued(tiny_engine):
    scheduler = BatchScheduler(tiny_engine, max_batch_size=1, max_queue=50)
    futures = [scheduler.submit(request(i, max_new_tokens=24)) for i in range(20)]
    scheduler.stop()
    outcomes = []
    for future in futures:
        try:
            future.result(timeout=60)
            outcomes.append("result")
        except ShuttingDown:
            outcomes.append("shutting_down")
    assert len(outcomes) == 20 and "shutting_down" in outcomes
    with pytest.raises(ShuttingDown):
        scheduler.submit(request(0))
