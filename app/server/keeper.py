"""The serving process's keeper: it imports once and forks a new serving process the moment one ends.

Supervisor runs the keeper. The keeper imports everything a server needs (web stack, torch, the
model's code) without starting a thread, then forks the *serving process*: that one binds the port,
forks the model process and answers requests. When the serving process ends without being asked to
(the watchdog killed it as hung, its model process was lost, it crashed), the keeper forks the next
one at once: a replacement skips the interpreter start and every import, the bulk of a cold start.

- The serving process dies with the keeper (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the keeper
  leaves nothing holding the port, and Supervisor starts everything again.
- The keeper adopts what a dead serving process leaves behind (``PR_SET_CHILD_SUBREAPER``) and ends it
  before the next one starts: a frozen model process never lingers holding memory.
- SIGTERM and SIGINT stop the serving process and then the keeper; SIGUSR1 (``chordctl swap``) and
  SIGHUP are passed on to it.
- What a serving process hands over (``tell``: the settings after a model swap) is what the next one
  starts with, so a replacement serves the swapped model, not the one the keeper started with.
- A serving process that exits with a status in ``final_statuses`` (the model cannot load) ends the
  keeper with that status, and so does one that ends ``max_replacements`` times within ``window_s``:
  then Supervisor's own start accounting takes over.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import psutil

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PASSED_ON = (signal.SIGUSR1, signal.SIGHUP)
_LEFTOVER_WAIT_S = 1.0

State = TypeVar("State")


@dataclass(frozen=True)
class KeeperPolicy:
    """When the keeper gives up instead of forking another serving process."""

    final_statuses: frozenset[int] = frozenset()
    max_replacements: int = 5
    window_s: float = 60.0


def run_keeper(serve: Callable[[State, Callable[[State], None]], int], state: State, policy: KeeperPolicy) -> int:
    """Run ``serve(state, tell)`` in a forked serving process, and again in a new one whenever it ends unasked;
    the exit status for this process (the last serving process's, when stopped or given up). ``tell(new)``,
    called in a serving process, makes ``new`` the state the next serving process gets."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    keeper = _Keeper()
    keeper.install()
    handover = Handover(state)
    replaced: deque[float] = deque()
    try:
        while True:
            pid = keeper.fork(lambda: serve(handover.state, handover.tell))
            status = _wait_for(pid)
            keeper.serving = 0
            _end_leftovers()
            handover.collect()
            if keeper.stopping:
                return _exit_status(status)
            if status in policy.final_statuses:
                logger.error("the serving process exited with status %d; not starting another", status)
                return status
            now = time.monotonic()
            while replaced and now - replaced[0] > policy.window_s:
                replaced.popleft()
            if len(replaced) >= policy.max_replacements:
                logger.error(
                    "the serving process ended %d times in %.0f s; stopping so that Supervisor takes over",
                    len(replaced) + 1, policy.window_s,
                )  # fmt: skip
                return 1
            replaced.append(now)
            logger.warning("the serving process (pid %d) %s; starting a new one", pid, describe_status(status))
    finally:
        handover.close()


class Handover(Generic[State]):
    """A value a serving process leaves for the next: written whole (a rename) to a private folder, read by the
    keeper once the process has ended."""

    def __init__(self, state: State):
        self.state = state
        self._folder = Path(tempfile.mkdtemp(prefix="chord-keeper-"))
        self._file = self._folder / "state.pickle"

    def tell(self, state: State) -> None:
        partial = self._folder / f"state.{os.getpid()}.partial"
        partial.write_bytes(pickle.dumps(state))
        os.replace(partial, self._file)

    def collect(self) -> None:
        if self._file.exists():
            self.state = pickle.loads(self._file.read_bytes())
            self._file.unlink()

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


class _Keeper:
    """The keeper's signal handling: what it was asked, and the serving process to pass signals to."""

    def __init__(self):
        self.stopping = False
        self.serving = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (*_STOP_SIGNALS, *_PASSED_ON):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        if signum in _STOP_SIGNALS:
            self.stopping = True
        if self.serving:
            # SIGINT reaches a terminal's whole process group already; passed on as SIGTERM it is not a second
            # SIGINT, which would make the server skip its graceful shutdown.
            _signal(self.serving, signal.SIGTERM if signum == signal.SIGINT else signum)

    def fork(self, serve: Callable[[], int]) -> int:
        """Fork a serving process running ``serve``. Signals are held back across the fork: the child gets
        those sent to it once its own handlers are back, the keeper once it knows the child's pid."""
        keeper_pid = os.getpid()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {*_STOP_SIGNALS, *_PASSED_ON})
        pid = os.fork()
        if pid == 0:
            self._run_serving(serve, keeper_pid, held)
        self.serving = pid
        if self.stopping:  # a stop that came while no serving process was there to pass it to
            _signal(pid, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return pid

    def _run_serving(self, serve: Callable[[], int], keeper_pid: int, held: set) -> None:
        status = 1
        try:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != keeper_pid:  # the keeper died before the line above
                os._exit(1)
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            status = serve()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the keeper decides what comes next from the status
            logger.exception("the serving process failed")
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


def describe_status(status: int) -> str:
    """``status`` as ``_wait_for`` returns it (negative: the signal that ended the process), in words."""
    if status < 0:
        try:
            return f"was ended by {signal.Signals(-status).name}"
        except ValueError:
            return f"was ended by signal {-status}"
    return f"exited with status {status}"


def _exit_status(status: int) -> int:
    return status if status >= 0 else 128 - status


def _wait_for(pid: int) -> int:
    """Wait until child ``pid`` ends (other children are reaped on the way); its exit status, negative for a
    signal."""
    while True:
        ended, raw = os.waitpid(-1, 0)
        if ended == pid:
            return os.waitstatus_to_exitcode(raw)


def _end_leftovers() -> None:
    """End what the last serving process left (its model process, adopted here): SIGTERM, then SIGKILL for what
    is still there after a second (a stopped process never acts on SIGTERM)."""
    leftovers = psutil.Process().children()
    for process in leftovers:
        try:
            if process.status() == psutil.STATUS_STOPPED:
                process.kill()
            else:
                process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(leftovers, timeout=_LEFTOVER_WAIT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=_LEFTOVER_WAIT_S)
    if leftovers:
        logger.info("ended %d process(es) the serving process left behind", len(leftovers))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _prctl(option: int, value: int) -> None:
    """Linux's prctl(2); elsewhere nothing (the keeper then relies on Supervisor's process-group stop)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        logger.warning("prctl(%d) failed: %s", option, os.strerror(ctypes.get_errno()))
