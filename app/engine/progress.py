"""When the model last made progress: a decoding step, a prefill, a finished batch. No torch here.

A frozen model (a hung CUDA kernel, a wedged driver, a stopped process) makes none while work waits
for it; the service turns that into ``/health`` 503 ``stalled`` and the watchdog restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressClock:
    """``tick()`` on every unit of progress; ``seconds_since()`` reads it. Safe from any thread."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def seconds_since(self) -> float:
        return time.monotonic() - self.last


def throttled(report: Callable[[], None], every_s: float) -> Callable[[], None]:
    """``report`` called at most once per ``every_s`` seconds (a step of a small model takes milliseconds)."""
    last = 0.0

    def maybe_report() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            report()

    return maybe_report
