"""Health tells the truth: a frozen model is 'stalled' (503) while work waits, idle never is, and a long
legitimate generation never is; /health/live answers whatever the model does."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
import pytest
from live_server import running_server

pytestmark = pytest.mark.slow
STALL_TIMEOUT_S = 2


def model_process(server) -> psutil.Process:
    """The server's model process (multiprocessing also starts a resource tracker beside it)."""
    children = psutil.Process(server.serving_pid).children()
    (child,) = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
    return child


def ground(server, results: list, **fields: str) -> None:
    with open(server.sample, "rb") as image:
        response = httpx.post(
            f"{server.url}/api/ground", files={"image": image}, data={"prompt": "cat", **fields}, timeout=300
        )
    results.append(response)


@pytest.fixture(scope="module")
def watched(tiny_checkpoint, tmp_path_factory, sample_png):
    folder = tmp_path_factory.mktemp("liveness")
    with running_server(tiny_checkpoint, folder, STALL_TIMEOUT_S=str(STALL_TIMEOUT_S), MODEL_PROCESS="true") as live:
        live.sample = sample_png
        yield live


def test_a_frozen_model_is_stalled_only_while_work_waits(watched):
    time.sleep(2 * STALL_TIMEOUT_S)  # idle for longer than STALL_TIMEOUT_S: not stalled
    assert httpx.get(f"{watched.url}/health", timeout=5).status_code == 200
    model = model_process(watched)
    model.send_signal(signal.SIGSTOP)  # as a hung kernel freezes it
    results: list[httpx.Response] = []
    request = threading.Thread(target=ground, args=(watched, results))
    try:
        request.start()
        started = time.monotonic()
        while time.monotonic() - started < 20:
            health = httpx.get(f"{watched.url}/health", timeout=5)
            if health.status_code == 503:
                break
            time.sleep(0.3)
        took = time.monotonic() - started
        print(f"\nmodel process stopped: /health 503 after {took:.1f} s (STALL_TIMEOUT_S={STALL_TIMEOUT_S})")
        assert health.status_code == 503 and health.json()["status"] == "stalled", health.text
        assert health.json()["stalled_s"] >= STALL_TIMEOUT_S  # rounded to 0.1 s
        assert httpx.get(f"{watched.url}/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{watched.url}/health/live", timeout=5).json()["status"] == "alive"
        metrics = httpx.get(f"{watched.url}/metrics", timeout=5).text
        assert "chord_model_stalled 1.0" in metrics
    finally:
        model.send_signal(signal.SIGCONT)
    request.join(timeout=120)
    assert results and results[0].status_code == 200, results
    assert httpx.get(f"{watched.url}/health", timeout=5).status_code == 200
    assert "chord_model_stalled 0.0" in httpx.get(f"{watched.url}/metrics", timeout=5).text


def test_a_long_generation_is_never_called_stalled(watched):
    results: list[httpx.Response] = []
    request = threading.Thread(target=ground, args=(watched, results), kwargs={"max_new_tokens": "2048"})
    started = time.monotonic()
    request.start()
    seen = []
    while request.is_alive():
        seen.append(httpx.get(f"{watched.url}/health", timeout=5).status_code)
        time.sleep(0.25)
    took = time.monotonic() - started
    print(f"\n2048-token answer: {took:.1f} s, /health polled {len(seen)} times: {set(seen)}")
    assert results[0].status_code == 200
    assert took > 1.5 * STALL_TIMEOUT_S, "the answer was too short to show anything: it must outlast STALL_TIMEOUT_S"
    assert set(seen) == {200}
