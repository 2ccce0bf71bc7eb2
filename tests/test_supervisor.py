"""Stay up 24x7: real supervisord from the project's conf, real processes, killed for real.

Each stack runs in a temp "installation" (supervisor/, scripts/ copied; app/ and .venv linked),
so its logs/ and run/ never touch the checkout. Times are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from live_server import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.supervisor]
STARTSECS = 8


class Stack:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        for folder in ("supervisor", "scripts"):
            shutil.copytree(ROOT / folder, home / folder)
        # The tiny checkpoint loads in seconds, not a 7B's minute: tune startsecs as an operator would.
        conf = home / "supervisor" / "supervisord.conf"
        conf.write_text(conf.read_text().replace("startsecs=60", f"startsecs={STARTSECS}"))
        for link in ("app", "config", ".venv"):
            (home / link).symlink_to(ROOT / link)
        self.env = {**os.environ, **env}
        self.port = int(env["PORT"])

    def chordctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.home / "scripts" / "chordctl"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def health(self) -> int | None:
        return self.health_answer()[0]

    def health_answer(self) -> tuple[int | None, dict]:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
            return response.status_code, response.json()
        except (httpx.HTTPError, ValueError):
            return None, {}

    def pid(self) -> int:
        """The keeper's pid: the process Supervisor runs."""
        out = self.chordctl("ctl", "pid", "chord").stdout.strip()
        return int(out) if out.isdigit() else 0

    def serving_pid(self) -> int:
        """The serving process's pid, as /health gives it (the keeper forked it)."""
        return self.health_answer()[1].get("pid", 0)

    def state(self) -> str:
        line = self.chordctl("ctl", "status", "chord").stdout.split()
        return line[1] if len(line) > 1 else ""

    def wait_healthy(self, timeout: float, other_than_pid: int = 0, other_than_serving: int = 0) -> float:
        """Seconds until /health is 200 (from a keeper other than ``other_than_pid``, a serving process other
        than ``other_than_serving``)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            status, answer = self.health_answer()
            if status == 200 and answer.get("pid") != other_than_serving and self.pid() not in (0, other_than_pid):
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"not healthy within {timeout} s; log:\n{self.log('chord')[-3000:]}")

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


def watchdog_env(**overrides) -> dict[str, str]:
    """The watchdog's default checks (interval, time-out, failures); a smaller budget and grace for tests."""
    env = {
        "WATCHDOG_GRACE": "60",
        "WATCHDOG_MAX_RESTARTS": "3",
        "WATCHDOG_WINDOW": "600",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def stack(tiny_checkpoint, tmp_path_factory):
    env = {"MODEL_PATH": tiny_checkpoint, "PORT": str(free_port()), "DEVICE": "cpu", "MAX_NEW_TOKENS": "16"}
    env["RESOURCE_LOG_INTERVAL_S"] = "2"
    stack = Stack(tmp_path_factory.mktemp("chord-install"), {**env, **watchdog_env()})
    started = time.monotonic()
    out = stack.chordctl("start")
    assert out.returncode == 0, out.stderr
    stack.load_seconds = stack.wait_healthy(120)
    print(f"\nfirst start: healthy {time.monotonic() - started:.1f} s after chordctl start")
    yield stack
    stack.chordctl("stop")


def test_status_reports_running(stack):
    # Healthy comes first; Supervisor says RUNNING once the process has stayed up startsecs.
    deadline = time.monotonic() + STARTSECS + 30
    while True:
        out = stack.chordctl("status")
        chord_line = next(line for line in out.stdout.splitlines() if line.startswith("chord "))
        if "RUNNING" in chord_line:
            break
        assert out.returncode != 0, "status exits non-zero while the server is not RUNNING"
        assert time.monotonic() < deadline, out.stdout
        time.sleep(0.5)
    assert out.returncode == 0 and "chord-watchdog" in out.stdout


def test_kill_9_of_the_keeper_comes_back_within_load_time_plus_5_s(stack):
    pid = stack.pid()
    os.kill(pid, signal.SIGKILL)  # its serving process dies with it (PR_SET_PDEATHSIG) and frees the port
    took = stack.wait_healthy(stack.load_seconds + 5 + 30, other_than_pid=pid)
    print(f"\nkill -9 of the keeper: /health 200 again after {took:.1f} s (load time {stack.load_seconds:.1f} s)")
    assert took <= stack.load_seconds + 5
    assert "Address already in use" not in stack.log("chord")


def test_kill_9_of_the_serving_process_is_replaced_by_the_keeper(stack):
    stack.wait_healthy(60)
    keeper, serving = stack.pid(), stack.serving_pid()
    os.kill(serving, signal.SIGKILL)
    refused, started = 0, time.monotonic()
    while time.monotonic() - started < 20:  # the keeper holds the port: connections wait for the next process
        try:
            answer = httpx.get(f"http://127.0.0.1:{stack.port}/health", timeout=10)
            if answer.status_code == 200 and answer.json()["pid"] != serving:
                break
        except httpx.ConnectError:
            refused += 1
        time.sleep(0.05)
    took = time.monotonic() - started
    print(f"\nkill -9 of the serving process: /health 200 again after {took:.1f} s, {refused} connections refused")
    assert took <= 20 and refused == 0
    assert stack.pid() == keeper, "the keeper replaced it; Supervisor did not restart anything"
    assert "was ended by SIGKILL; starting a new one" in stack.log("chord")


def test_a_hung_server_is_killed_and_serves_again_within_20_s(stack):
    stack.wait_healthy(60)
    keeper, serving = stack.pid(), stack.serving_pid()
    os.kill(serving, signal.SIGSTOP)  # the process that answers HTTP, frozen
    try:
        took = stack.wait_healthy(60, other_than_serving=serving)
    finally:
        try:
            os.kill(serving, signal.SIGCONT)
        except ProcessLookupError:
            pass
    print(f"\nkill -STOP of the serving process: killed, replaced and healthy after {took:.1f} s")
    # A check a second, two 2 s time-outs in a row, a kill, then a serving process forked with its code
    # already imported (about a second for the tiny checkpoint).
    assert took <= 20
    assert "killed pid" in stack.log("watchdog") and stack.pid() == keeper


def test_a_frozen_keeper_does_not_stop_the_serving(stack, sample_png):
    stack.wait_healthy(60)
    keeper = stack.pid()
    image = Path(sample_png).read_bytes()
    os.kill(keeper, signal.SIGSTOP)  # the keeper is not on any request's path
    try:
        for _ in range(5):
            response = httpx.post(f"http://127.0.0.1:{stack.port}/api/ground", files={"image": image},
                                  data={"prompt": "cat"}, timeout=10)  # fmt: skip
            assert response.status_code == 200, response.text
            assert stack.health() == 200
            time.sleep(0.5)
    finally:
        os.kill(keeper, signal.SIGCONT)
    assert stack.pid() == keeper


def test_a_frozen_model_process_is_restarted_and_serves_again_within_45_s(stack, sample_png):
    stack.wait_healthy(120)
    server = stack.serving_pid()
    children = psutil.Process(server).children()
    models = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(models) == 1, f"server {server}: children {[' '.join(c.cmdline()) for c in children]}"
    model = models[0]
    model.send_signal(signal.SIGSTOP)  # as a hung CUDA kernel or a wedged driver freezes it
    started = time.monotonic()
    image = Path(sample_png).read_bytes()
    answered = None
    while time.monotonic() - started < 90:
        try:
            response = httpx.post(f"http://127.0.0.1:{stack.port}/api/ground", files={"image": image},
                                  data={"prompt": "cat"}, timeout=3)  # fmt: skip
            if response.status_code == 200:
                answered = time.monotonic() - started
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"\nmodel process kill -STOP: /api/ground 200 again after {answered} s")
    # STALL_TIMEOUT_S (15 s), a check (3 s), then the serving process killed and a new one forked.
    assert answered is not None and answered <= 45
    # /health says "stalled" only until the watchdog's next check: its log is the witness.
    assert "reports its model stalled" in stack.log("watchdog") and stack.serving_pid() != server
    # The keeper ended the frozen model process the killed serving process left behind.
    assert not model.is_running() or model.status() == psutil.STATUS_ZOMBIE


def test_logs_and_health_commands(stack):
    assert "GET" in stack.chordctl("health").stdout or "HTTP 200" in stack.chordctl("health").stdout
    assert stack.chordctl("logs", "watchdog").returncode == 0


def test_saved_settings_stay_across_restarts_and_stops(stack):
    """PORT given at start, MODEL_PATH at a restart: after a stop and a start, both still hold."""
    assert f"PORT={stack.port}" in stack.chordctl("env").stdout
    other = stack.home / "renamed-checkpoint"
    if not other.exists():
        other.symlink_to(stack.env["MODEL_PATH"])
    given = {k: v for k, v in stack.env.items() if k not in ("PORT", "MODEL_PATH")}
    out = subprocess.run([str(stack.home / "scripts" / "chordctl"), "restart"], env={**given, "MODEL_PATH": str(other)},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    stack.wait_healthy(90)
    bare = {k: v for k, v in given.items() if not k.startswith("WATCHDOG_")}
    for command in ("stop", "start"):
        out = subprocess.run([str(stack.home / "scripts" / "chordctl"), command], env=bare, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
    stack.wait_healthy(120)
    health = httpx.get(f"http://127.0.0.1:{stack.port}/health", timeout=5).json()
    assert health["model"] == "renamed-checkpoint"  # still on PORT, serving the model given at the restart
    saved = stack.chordctl("env").stdout
    assert f"PORT={stack.port}" in saved and "renamed-checkpoint" in saved
    assert "MAX_NEW_TOKENS" in saved
    stack.chordctl("env", "--unset", "MAX_NEW_TOKENS")
    assert "MAX_NEW_TOKENS" not in stack.chordctl("env").stdout


def test_the_resource_log_writes_logs_metrics_log(stack):
    deadline = time.monotonic() + 30
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in stack.log("metrics").splitlines()]
        if any(line.get("server") and line["server"]["pid"] == stack.serving_pid() for line in lines):
            break
        time.sleep(0.5)
    assert any(line.get("server") and line["server"]["pid"] == stack.serving_pid() for line in lines), stack.log(
        "resources"
    )
    assert "chord-resources" in stack.chordctl("ctl", "status").stdout


def test_restart_with_new_settings_swaps_them(stack):
    out = subprocess.run(
        [str(stack.home / "scripts" / "chordctl"), "restart"],
        env={**stack.env, "MAX_NEW_TOKENS": "8"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "MAX_NEW_TOKENS=8" in (stack.home / "run" / "chord.env").read_text()
    stack.wait_healthy(60)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """A second tiny checkpoint (other weights, another folder name) to swap to."""
    from app.engine.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("swap") / "tiny-other", seed=1, init_std=0.5)


class Traffic:
    """A client grounding continuously, as a user would during a swap; every status code is kept."""

    def __init__(self, port: int, image: bytes):
        self.statuses: list[int | str] = []
        self._url = f"http://127.0.0.1:{port}/api/ground"
        self._image = image
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self._url, files={"image": self._image}, data={"prompt": "the red square"})
                    self.statuses.append(response.status_code)
                except httpx.HTTPError as exc:
                    self.statuses.append(type(exc).__name__)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        time.sleep(1)  # a few requests after the swap, too
        self._stop.set()
        self._thread.join(60)


def serving_model(stack: Stack) -> str:
    return httpx.get(f"http://127.0.0.1:{stack.port}/health", timeout=5).json()["model"]


def test_swap_under_load_answers_every_request_and_rollback_returns(stack, other_checkpoint, sample_png):
    stack.wait_healthy(120)
    first = serving_model(stack)
    image = Path(sample_png).read_bytes()
    with Traffic(stack.port, image) as traffic:
        started = time.monotonic()
        out = stack.chordctl("swap", str(other_checkpoint), "--watch", "3", timeout=300)
        took = time.monotonic() - started
    print(f"\nswap under load: {took:.1f} s, {len(traffic.statuses)} requests during it\n{out.stdout}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    assert serving_model(stack) == "tiny-other"
    assert f"MODEL_PATH={other_checkpoint}" in stack.chordctl("env").stdout  # a restart keeps the new model
    assert 'chord_model_info{model="tiny-other"} 1.0' in httpx.get(f"http://127.0.0.1:{stack.port}/metrics").text
    serving = stack.serving_pid()  # a serving process that dies after a swap is replaced by one serving the new model
    os.kill(serving, signal.SIGKILL)
    stack.wait_healthy(60, other_than_serving=serving)
    assert serving_model(stack) == "tiny-other"

    with Traffic(stack.port, image) as traffic:
        out = stack.chordctl("rollback", "--watch", "2", timeout=300)
    print(f"rollback: {len(traffic.statuses)} requests during it\n{out.stdout}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    assert serving_model(stack) == first


def test_a_swap_to_a_broken_checkpoint_fails_and_the_old_model_keeps_serving(stack, other_checkpoint, sample_png,
                                                                             tmp_path):  # fmt: skip
    stack.wait_healthy(120)
    before = serving_model(stack)
    broken = tmp_path / "tiny-broken"
    shutil.copytree(other_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated, as a cut-off copy
    with Traffic(stack.port, Path(sample_png).read_bytes()) as traffic:
        out = stack.chordctl("swap", str(broken), timeout=300)
    print(f"\nswap to a truncated checkpoint: exit {out.returncode}\n{out.stdout}{out.stderr}")
    assert out.returncode == 1
    assert "did not load" in out.stdout and "previous model keeps serving" in out.stderr
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    assert serving_model(stack) == before
    assert "tiny-broken" not in stack.chordctl("env").stdout


def test_a_swap_whose_canary_finds_nothing_fails(stack, other_checkpoint, sample_png):
    """The operator's canary must find something: a random-weight model answers it with no box."""
    before = serving_model(stack)
    out = stack.chordctl("swap", str(other_checkpoint), "--canary", sample_png, "the red square", timeout=300)
    print(f"\nswap with a canary the model fails:\n{out.stdout}")
    assert out.returncode == 1 and "the canary found nothing" in out.stdout
    assert serving_model(stack) == before


def test_an_in_place_swap_says_how_long_requests_were_refused(stack, other_checkpoint):
    before = serving_model(stack)
    out = stack.chordctl("swap", str(other_checkpoint), "--in-place", "--watch", "1", timeout=300)
    print(f"\nin-place swap:\n{out.stdout}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"requests were refused for \d+\.\d s", out.stdout)
    assert serving_model(stack) == "tiny-other"
    assert stack.chordctl("rollback", "--watch", "1", timeout=300).returncode == 0
    assert serving_model(stack) == before


def test_stop_leaves_nothing_listening(stack):
    assert stack.listening()
    out = stack.chordctl("stop")
    assert out.returncode == 0, out.stderr
    assert not stack.listening()
    leftovers = subprocess.run(["pgrep", "-f", str(stack.home)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"processes left: {leftovers}"
    assert stack.chordctl("status").returncode != 0


def test_a_missing_model_ends_fatal_with_the_cause_and_the_watchdog_keeps_its_budget(tmp_path):
    env = {"MODEL_PATH": str(tmp_path / "no-such-model"), "PORT": str(free_port()), "DEVICE": "cpu"}
    stack = Stack(tmp_path / "install", {**env, **watchdog_env(WATCHDOG_MAX_RESTARTS="2")})
    assert stack.chordctl("start").returncode == 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "RESTART BUDGET EXHAUSTED" not in stack.log("watchdog"):
            time.sleep(1)
        watchdog = stack.log("watchdog")
        assert "RESTART BUDGET EXHAUSTED" in watchdog, watchdog
        time.sleep(8)  # a budget-exhausted watchdog does nothing more
        while stack.state() in ("STARTING", "BACKOFF"):
            time.sleep(1)
        assert stack.state() == "FATAL"
        starts = stack.log("watchdog").count("start chord (supervisor reports FATAL)")
        print(f"\nmissing model: FATAL, watchdog started it {starts} times, then stopped (budget 2)")
        assert starts == 2
        assert "does not exist" in stack.log("chord") and "no-such-model" in stack.log("chord")
    finally:
        stack.chordctl("stop")
