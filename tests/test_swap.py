"""Model swaps inside one service: the canary's checks, the request file, and the watch that switches back.

The whole path under Supervisor (``chordctl swap`` under load, a truncated checkpoint, rollback,
in place) is in tests/test_supervisor.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from app.errors import ModelLoadError
from app.grounding.options import GroundingOptions
from app.grounding.result import GroundingResult
from app.server.swap_control import SwapControl
from app.service.service import GroundingService
from app.service.swap import Canary, ModelSwap, SwapPlan, canary_problem, default_canary
from app.settings import load_settings


def result(boxes, image_size=(448, 336), labels=None) -> GroundingResult:
    return GroundingResult(
        boxes=boxes, labels=labels if labels is not None else ["x"] * len(boxes), scores=[0.9] * len(boxes),
        points=[], point_labels=[], text="", image_size=list(image_size), input_size=None, model="m",
        latency_ms=1.0, phrases=["the red square"],
    )  # fmt: skip


def test_a_canary_answer_must_be_well_formed():
    assert canary_problem(result([[160, 100, 280, 220]]), (448, 336), need_boxes=True) is None
    assert canary_problem(result([]), (448, 336), need_boxes=False) is None
    assert "found nothing" in canary_problem(result([]), (448, 336), need_boxes=True)
    assert "outside the image" in canary_problem(result([[160, 100, 500, 220]]), (448, 336), need_boxes=False)
    assert "do not line up" in canary_problem(result([[1, 1, 2, 2]], labels=[]), (448, 336), need_boxes=False)
    assert "for a [10, 10] image" in canary_problem(result([], image_size=(10, 10)), (448, 336), need_boxes=False)
    assert "failed: no" in canary_problem(ModelLoadError("no"), (448, 336), need_boxes=False)


def test_the_built_in_canary_is_an_image_any_model_can_answer():
    canary = default_canary()
    assert canary.image.size == (448, 336) and canary.phrases == ("the red square",) and not canary.need_boxes


def test_a_request_file_with_a_bad_id_or_no_file_does_nothing(tmp_path):
    control = SwapControl(GroundingService(load_settings(model_path="demo")), 7000, tmp_path)
    assert control.take_request() is None  # SIGUSR1 without a request
    (tmp_path / "swap").mkdir()
    request = tmp_path / "swap" / "request-7000.json"
    request.write_text(json.dumps({"id": "../../etc/x", "model_path": "demo"}))
    assert control.take_request() is None and not request.exists()
    assert list((tmp_path / "swap").iterdir()) == []  # nothing written outside or inside


@pytest.fixture(scope="module")
def two_checkpoints(tiny_checkpoint, tmp_path_factory) -> tuple[str, str]:
    from app.engine.tiny_checkpoint import build_tiny_checkpoint

    other = build_tiny_checkpoint(tmp_path_factory.mktemp("swap-unit") / "tiny-b", seed=1, init_std=0.5)
    return tiny_checkpoint, str(other)


def settings_for(path: str, **overrides):
    return load_settings(model_path=path, device="cpu", max_new_tokens=8, max_pixels=28 * 28 * 64, **overrides)


@pytest.mark.slow
def test_a_swap_request_file_swaps_and_reports_each_stage(two_checkpoints, tmp_path):
    first, second = two_checkpoints
    service = GroundingService(settings_for(first, model_process=False))
    service.load()
    control = SwapControl(service, 7001, tmp_path)
    (tmp_path / "swap").mkdir()
    (tmp_path / "swap" / "request-7001.json").write_text(json.dumps({"id": "s1", "model_path": second, "watch_s": 0}))
    outcome = control.take_request()
    assert outcome is not None and outcome.ok, outcome
    assert service.health()["model"] == "tiny-b"
    lines = [json.loads(line) for line in (tmp_path / "swap" / "s1.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == [
        "start", "loading", "loaded", "canary", "switched", "watching", "done", "result",
    ]  # fmt: skip
    assert lines[-1]["final"] and lines[-1]["ok"] and lines[-1]["model"] == "tiny-b"
    service.close()


@pytest.mark.slow
def test_a_new_model_that_stalls_while_watched_is_dropped_and_the_old_one_serves(two_checkpoints):
    """The new model (in its own process) freezes during the watch, with a request waiting: /health turns
    stalled, traffic goes back to the old model, and it answers."""
    first, second = two_checkpoints
    service = GroundingService(settings_for(first, model_process=True, stall_timeout_s=1.0, request_timeout_s=20))
    service.load()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    image = Image.new("RGB", (224, 168), (120, 130, 140))

    def ground():
        coroutine = service.ground_one(image, ("the red square",), GroundingOptions())
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    frozen: list[int] = []

    def say(stage: str, message: str) -> None:
        if stage == "watching":  # the new model serves now: freeze it, then send it work
            pid = service._serving.engine.runner.pid
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
            ground()

    swap = ModelSwap(service)
    started = time.monotonic()
    outcome = swap.run(SwapPlan(second, Canary(image, ("the red square",)), watch_s=30), say)
    took = time.monotonic() - started
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    print(f"\nstalled new model dropped after {took:.1f} s: {outcome.reason}")
    assert frozen and not outcome.ok
    assert "stalled" in outcome.reason and outcome.model == Path(first).name
    assert service.health()["model"] == Path(first).name
    answered = ground().result(timeout=30)
    assert answered.image_size == [224, 168]
    service.close()
    loop.call_soon_threadsafe(loop.stop)
