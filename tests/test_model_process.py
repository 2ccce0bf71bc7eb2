"""The model in its own process: the same answers as in the server process, and a clear end when it dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from app.engine.base import GroundingRequest
from app.engine.model_process import ModelProcess, SharedTensors
from app.engine.model_spawn import spawn_model_process
from app.errors import ModelProcessExited
from app.settings import load_settings


def started(settings):
    """A model process as the server starts one: spawned first, then waited for."""
    spawned = spawn_model_process(settings)
    return spawned.process, spawned.connection


def model_children(pid: int) -> list[psutil.Process]:
    """The server's child processes other than multiprocessing's resource tracker."""
    return [p for p in psutil.Process(pid).children() if "resource_tracker" not in " ".join(p.cmdline())]


def noise_request(i: int) -> GroundingRequest:
    rng = np.random.default_rng(i)
    w, h = 60 + 37 * i, 50 + 29 * (i % 3)
    return GroundingRequest(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), (f"object {i}",))


@pytest.fixture(scope="module")
def model_process(tiny_checkpoint):
    settings = load_settings(model_path=tiny_checkpoint, device="cpu", max_new_tokens=24, max_pixels=28 * 28 * 64)
    process = ModelProcess.start(*started(settings), exit_on_loss=False)
    yield process
    process.close()


def test_shared_tensors_round_trip_and_grow():
    writer = SharedTensors(initial_bytes=1024)
    reader = SharedTensors.reader()
    try:
        small = {"ids": torch.arange(10).view(2, 5), "x": torch.randn(3, 4)}
        read = reader.read(writer.write(small))
        assert all(torch.equal(read[k], v) for k, v in small.items())
        large = {"pixels": torch.randn(300, 1176), "grid": torch.tensor([[1, 10, 30]])}  # 1.4 MB > 1 KB
        read = reader.read(writer.write(large))
        assert all(torch.equal(read[k], v) and read[k].dtype == v.dtype for k, v in large.items())
    finally:
        writer.close()


@pytest.mark.slow  # starts a model process: a second interpreter that imports torch and loads the model
def test_the_model_process_answers_as_the_in_process_model(model_process, tiny_engine):
    requests = [noise_request(i) for i in range(5)]
    prepared = tiny_engine.prepare(requests)
    here = tiny_engine.runner.generate_ids(dict(prepared.inputs), 24)
    there = model_process.generate_ids(dict(prepared.inputs), 24)
    assert torch.equal(here[0], there[0]), "greedy fp32: the same tokens in either process"
    assert torch.allclose(here[1], there[1])
    assert model_process.info == tiny_engine.info
    assert model_process.pid != os.getpid()


@pytest.mark.slow  # starts a model process: a second interpreter that imports torch and loads the model
def test_a_dead_model_process_is_a_clear_error(tiny_checkpoint, tiny_engine):
    settings = load_settings(model_path=tiny_checkpoint, device="cpu", max_new_tokens=8, max_pixels=28 * 28 * 64)
    process = ModelProcess.start(*started(settings), exit_on_loss=False)
    try:
        os.kill(process.pid, signal.SIGKILL)
        prepared = tiny_engine.prepare([noise_request(0)])
        with pytest.raises(ModelProcessExited) as info:
            process.generate_ids(dict(prepared.inputs), 8)
        assert info.value.status == 503 and info.value.code == "model_process_exited"
        assert "exit code -9" in info.value.message
    finally:
        process.close()


@pytest.mark.slow
def test_a_serving_process_whose_model_process_dies_is_replaced(tiny_checkpoint, sample_png, tmp_path):
    """The serving process ends (it can never answer again) and its keeper forks a new one at once."""
    from live_server import start_server

    live = start_server(tiny_checkpoint, tmp_path)
    try:
        live.wait_for_health(200)
        serving = live.serving_pid
        children = model_children(serving)
        assert len(children) == 1, "the model runs in one child process"
        children[0].kill()
        # The keeper holds the port: a request is answered by the old serving process (503, its model is gone) or
        # waits in the backlog for the new one (200); none is refused.
        image = Path(sample_png).read_bytes()
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = httpx.post(f"{live.url}/api/ground", files={"image": image}, data={"prompt": "x"}, timeout=60)
            code = response.json()["error"]["code"] if response.status_code != 200 else None
            statuses.append((response.status_code, code))
            if response.status_code == 200 and live.serving_pid != serving:
                break
        assert set(statuses) <= {(503, "model_process_exited"), (200, None)}, statuses
        answer = live.wait_for_health(200, timeout_s=30)
        assert answer["pid"] != serving and live.process.poll() is None, "a new serving process, the same keeper"
        assert len(model_children(answer["pid"])) == 1
        assert "model process ended" in live.log() and "starting a new one" in live.log()
    finally:
        live.stop()


@pytest.mark.slow  # starts the real server
def test_the_model_process_ends_with_the_server(tiny_checkpoint, tmp_path):
    from live_server import start_server

    live = start_server(tiny_checkpoint, tmp_path)
    try:
        live.wait_for_health(200)
        serving = psutil.Process(live.serving_pid)
        [child] = model_children(serving.pid)
        live.process.kill()  # SIGKILL of the keeper: no shutdown code runs anywhere
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (_alive(child) or _alive(serving)):
            time.sleep(0.2)
    finally:
        live.stop()
    assert not _alive(serving), "the serving process outlived its keeper"
    assert not _alive(child), "the model process outlived the server"


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
