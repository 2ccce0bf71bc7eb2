"""The keeper (app/server/keeper.py): real forks, real signals, a stand-in serving function.

Each case runs a keeper in its own process (it installs signal handlers and becomes a subreaper), with
a serving function chosen by name that records each run's pid in a file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

KEEPER = textwrap.dedent(
    """
    import logging, os, signal, sys, time
    from pathlib import Path
    from app.server.keeper import KeeperPolicy, run_keeper

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    folder, behaviour = Path(sys.argv[1]), sys.argv[2]
    runs = folder / "runs"

    def wait_for_term():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGUSR1, lambda *_: (folder / "usr1").write_text(str(os.getpid())))
        while True:
            time.sleep(0.05)

    def serve(state, tell):
        earlier = runs.read_text().splitlines() if runs.exists() else []
        with runs.open("a") as out:
            out.write(f"{os.getpid()} {state}\\n")
        if behaviour == "hands-over" and not earlier:
            tell("swapped")
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "killed-once" and not earlier:
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "always-killed":
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "cannot-load":
            return 3
        if behaviour == "leaves-a-frozen-child" and not earlier:
            child = os.fork()
            if child == 0:
                os.kill(os.getpid(), signal.SIGSTOP)
                os._exit(0)
            (folder / "frozen").write_text(str(child))
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)
        wait_for_term()

    policy = KeeperPolicy(final_statuses=frozenset({3}), max_replacements=2, window_s=60)
    sys.exit(run_keeper(serve, "as started", policy))
    """
)


def start_keeper(folder: Path, behaviour: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(folder), behaviour],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def runs(folder: Path, count: int, timeout: float = 20) -> list[int]:
    """The pids of the first ``count`` serving processes, once there are that many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / "runs"
        pids = [int(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} serving processes within {timeout} s")


def stop(keeper: subprocess.Popen) -> tuple[int, str]:
    keeper.send_signal(signal.SIGTERM)
    out, _ = keeper.communicate(timeout=20)
    return keeper.returncode, out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_serving_process_is_replaced_and_a_stop_ends_both(tmp_path):
    keeper = start_keeper(tmp_path, "killed-once")
    first, second = runs(tmp_path, 2)
    assert first != second and gone(first)
    assert psutil.Process(second).ppid() == keeper.pid
    status, out = stop(keeper)
    assert status == 0, out
    assert f"the serving process (pid {first}) was ended by SIGKILL; starting a new one" in out
    assert gone(second)


def test_what_a_serving_process_hands_over_is_what_the_next_one_starts_with(tmp_path):
    keeper = start_keeper(tmp_path, "hands-over")
    try:
        runs(tmp_path, 2)
    finally:
        stop(keeper)
    states = [line.split(" ", 1)[1] for line in (tmp_path / "runs").read_text().splitlines()]
    assert states == ["as started", "swapped"]


def test_a_serving_process_that_cannot_load_ends_the_keeper_with_its_status(tmp_path):
    keeper = start_keeper(tmp_path, "cannot-load")
    out, _ = keeper.communicate(timeout=20)
    assert keeper.returncode == 3, out
    assert len(runs(tmp_path, 1)) == 1, "not replaced"
    assert "exited with status 3; not starting another" in out


def test_a_keeper_gives_up_after_too_many_replacements(tmp_path):
    keeper = start_keeper(tmp_path, "always-killed")
    out, _ = keeper.communicate(timeout=20)
    assert keeper.returncode == 1, out
    assert len(runs(tmp_path, 3)) == 3, "the first, then max_replacements=2 more"
    assert "ended 3 times in 60 s; stopping so that Supervisor takes over" in out


def test_what_a_dead_serving_process_leaves_is_ended_before_the_next_starts(tmp_path):
    keeper = start_keeper(tmp_path, "leaves-a-frozen-child")
    try:
        runs(tmp_path, 2)
        frozen = int((tmp_path / "frozen").read_text())
        assert gone(frozen), "a stopped orphan never acts on SIGTERM: the keeper must SIGKILL it"
    finally:
        status, out = stop(keeper)
    assert "ended 1 process(es) the serving process left behind" in out


def test_signals_are_passed_on_and_the_serving_process_dies_with_its_keeper(tmp_path):
    keeper = start_keeper(tmp_path, "serves")
    (serving,) = runs(tmp_path, 1)
    time.sleep(0.3)  # the serving function's handlers installed
    keeper.send_signal(signal.SIGUSR1)  # what `chordctl swap` sends to Supervisor's pid
    deadline = time.monotonic() + 10
    while not (tmp_path / "usr1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "usr1").read_text() == str(serving)
    keeper.kill()  # no code of the keeper's runs
    keeper.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not gone(serving) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(serving), "the serving process outlived its keeper (and would hold the port)"
