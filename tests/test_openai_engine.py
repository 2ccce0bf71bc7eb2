"""ENGINE=openai against a real OpenAI-compatible server: ``transformers serve`` on the tiny checkpoint.

Chord (the real server) in front of it: grounding through the REST API, 502 and an unhealthy
/health once the engine is killed, recovery once it is back. No fake of the engine anywhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from live_server import free_port, start_server
from PIL import Image

pytestmark = pytest.mark.slow

TINY_MAX_PIXELS = 28 * 28 * 64  # the tiny checkpoint's own processor limit, and live_server's MAX_PIXELS


class EngineServer:
    """``transformers serve MODEL`` on loopback, CPU; can be killed and started again on the same port."""

    def __init__(self, model_dir: str, home: Path):
        self.model_dir = model_dir
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 180) -> None:
        executable = shutil.which("transformers", path=str(Path(sys.executable).parent))
        assert executable, "transformers[serving] is not installed in this venv (pip install -r requirements-dev.txt)"
        # /v1/models lists the Hugging Face cache: it must exist (an empty one lists nothing).
        cache = self.home / "hf-cache"
        cache.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
        self.starts += 1
        log = (self.home / f"engine-{self.starts}.log").open("wb")
        command = [executable, "serve", self.model_dir, "--device", "cpu", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), "--log-level", "info"],
            cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"transformers serve exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"transformers serve did not answer within {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    def log(self) -> str:
        return (self.home / f"engine-{self.starts}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, tmp_path_factory):
    server = EngineServer(tiny_checkpoint, tmp_path_factory.mktemp("engine"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def chord(engine, tiny_checkpoint, tmp_path_factory):
    """Chord with ENGINE=openai; MODEL_PATH names the local checkpoint only for its family and pixel range."""
    live = start_server(
        tiny_checkpoint, tmp_path_factory.mktemp("chord-openai"),
        ENGINE="openai", ENGINE_URL=engine.url, ENGINE_MODEL=tiny_checkpoint, ENGINE_TIMEOUT_S="60",
    )  # fmt: skip
    try:
        live.wait_for_health(200)
        yield live
    finally:
        live.stop()


def expected_input_wh(image_wh: tuple[int, int]) -> list[int]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    height, width = smart_resize(image_wh[1], image_wh[0], factor=28, min_pixels=56 * 56, max_pixels=TINY_MAX_PIXELS)
    return [width, height]


def ground(chord, image_path: str, prompt: str = "the red square") -> httpx.Response:
    with open(image_path, "rb") as f:
        files = {"image": ("sample.png", f, "image/png")}
        return httpx.post(f"{chord.url}/api/ground", files=files, data={"prompt": prompt}, timeout=120)


def test_health_names_the_engine_and_its_reachability(chord, engine):
    body = httpx.get(f"{chord.url}/health", timeout=5).json()
    assert body["status"] == "ok" and body["backend"] == "openai" and body["family"] == "qwen2.5-vl"
    assert body["engine"]["url"] == engine.url and body["engine"]["reachable"] is True


def test_grounding_through_the_engine_returns_the_result_shape(chord, sample_png, tiny_engine):
    response = ground(chord, sample_png)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"boxes", "labels", "scores", "points", "point_labels", "text", "image_size", "input_size"}
    assert body["image_size"] == [320, 240]
    assert body["input_size"] == expected_input_wh((320, 240))
    # the same size the in-process engine reads from the processor's own output for this image
    from app.engine.base import GroundingRequest

    in_process = tiny_engine.ground([GroundingRequest(Image.open(sample_png).convert("RGB"), ("the red square",))])
    assert body["input_size"] == in_process[0].input_size
    # transformers serve returns no token log-probabilities: scores are null, never invented
    assert all(score is None for score in body["scores"])
    assert body["phrases"] == ["the red square"]


def test_a_batch_goes_to_the_engine_concurrently_and_answers_in_order(chord, sample_png, tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("RGB", (200, 300), (30, 90, 200)).save(tall)
    with open(sample_png, "rb") as a, open(tall, "rb") as b:
        files = [("images", ("a.png", a, "image/png")), ("images", ("b.png", b, "image/png"))]
        response = httpx.post(f"{chord.url}/api/ground/batch", files=files, data={"prompt": "cup"}, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image_size"] for r in results] == [[320, 240], [200, 300]]
    assert [r["input_size"] for r in results] == [expected_input_wh((320, 240)), expected_input_wh((200, 300))]


def test_a_dead_engine_gives_502_and_unhealthy_health_then_recovers(chord, engine, sample_png):
    engine.kill()
    response = ground(chord, sample_png)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "engine_unavailable" and engine.url in error["message"]
    health = httpx.get(f"{chord.url}/health", timeout=5)
    assert health.status_code == 503
    assert health.json()["status"] == "engine_unreachable" and health.json()["engine"]["reachable"] is False

    engine.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{chord.url}/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "Chord's /health did not recover after the engine came back"
        time.sleep(0.5)
    response = ground(chord, sample_png)
    assert response.status_code == 200, response.text
    assert response.json()["input_size"] == expected_input_wh((320, 240))


def test_engine_refusals_and_timeouts_become_chord_errors(engine, tiny_checkpoint, sample_png):
    """The engine object itself against the same real server: a 4xx and a read timeout."""
    from app.engine.base import GroundingRequest
    from app.engine.openai_engine import OpenAIEngine
    from app.errors import EngineRejected, EngineTimeout
    from app.settings import load_settings

    if engine.process.poll() is not None:
        engine.start()
    request = GroundingRequest(Image.open(sample_png).convert("RGB"), ("cup",))
    common = {"engine": "openai", "engine_url": engine.url, "model_path": tiny_checkpoint}
    common["max_pixels"] = TINY_MAX_PIXELS

    wrong_model = OpenAIEngine.load(load_settings(**common, engine_model="no-such-model"))
    try:
        [refused] = wrong_model.ground([request])
    finally:
        wrong_model.close()
    assert isinstance(refused, EngineRejected) and refused.status == 502 and "HTTP 400" in refused.message

    impatient = OpenAIEngine.load(load_settings(**common, engine_model=tiny_checkpoint, engine_timeout_s=0.001))
    try:
        [late] = impatient.ground([request])
    finally:
        impatient.close()
    assert isinstance(late, EngineTimeout) and late.status == 504 and "ENGINE_TIMEOUT_S" in late.message
