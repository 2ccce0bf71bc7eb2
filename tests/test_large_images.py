"""A large-image request on the demo model: one place in the queue, and nothing more sent once it is over.

LARGE_IMAGE_MODE=tiles on a 3000x2000 canvas means a whole-image pass, 12 tiles and zoomed crops:
more than twenty generations, sent one after the other.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image, ImageDraw

from app.batch.in_process import InProcessService
from app.errors import RequestTimeout
from app.grounding.options import GroundingOptions
from app.service.records import RequestRecord
from app.settings import load_settings

pytestmark = pytest.mark.slow


def canvas_png() -> bytes:
    image = Image.new("RGB", (3000, 2000), (180, 170, 150))
    ImageDraw.Draw(image).rectangle((2000, 600, 2300, 900), fill=(40, 80, 220))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def chord(**overrides) -> InProcessService:
    settings = load_settings(model_path="demo", device="cpu", max_new_tokens=64, large_image_mode="tiles",
                             model_process=False, log_level="WARNING", **overrides)  # fmt: skip
    return InProcessService(settings)


def ground(service, data: bytes):
    options = GroundingOptions()
    return service.ground_upload(data, ("the blue square",), RequestRecord(endpoint="test"), options)


def test_a_tiled_request_holds_one_place_in_the_queue_and_finds_the_square():
    with chord(max_queue=2, max_batch_size=8) as local:
        service = local.service
        depths, done = [], threading.Event()

        def watch() -> None:
            while not done.is_set():
                health = service.health()
                depths.append((health["queue_depth"], health["in_flight"]))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        served = service.health()["requests_served"]
        try:
            result = local.run(ground(service, canvas_png()))
        finally:
            done.set()
            watcher.join()
        generations = service.health()["requests_served"] - served
    assert generations > 12  # the whole image, 12 tiles, the zoomed crops
    assert max(queued for queued, _ in depths) == 1  # never more than one of them in the queue ...
    assert max(asked for _, asked in depths) == 1  # ... or sent and not yet answered
    assert [b for b in result.boxes if b[0] < 2300 and b[2] > 2000 and b[1] < 900 and b[3] > 600]  # found
    assert all(b[0] < 2300 and b[2] > 2000 and b[1] < 900 and b[3] > 600 for b in result.boxes)  # no phantom


def test_a_timed_out_request_sends_nothing_more():
    with chord(request_timeout_s=1.0) as local:
        service = local.service
        with pytest.raises(RequestTimeout):
            local.run(ground(service, canvas_png()))
        served = service.health()["requests_served"]
        time.sleep(2)
        assert service.health()["requests_served"] == served
        assert service.health()["in_flight"] == 0


def test_a_caller_that_goes_away_stops_the_rest():
    with chord() as local:
        service = local.service
        future = asyncio.run_coroutine_threadsafe(ground(service, canvas_png()), local._loop)
        time.sleep(1.5)  # some generations done, many to come
        future.cancel()
        time.sleep(0.5)
        served = service.health()["requests_served"]
        time.sleep(2)
        assert service.health()["requests_served"] == served
        assert service.health()["in_flight"] == 0
