"""Dynamic batching in front of one engine: a bounded queue, batches, timeouts, backpressure.

Every caller (UI, REST, batch tools) submits one request and gets a future. A collector thread
takes up to ``max_batch_size`` waiting requests (while the model is busy it waits at most
``max_batch_wait_ms`` for a batch to fill; an idle model gets what is queued at once), prepares
them (processor work) and hands the prepared batch to the model thread, so the next batch is
prepared while the current one generates. Each caller gets its own result.
A full queue refuses at once (QueueFull, with a retry hint); a request still queued when its
timeout passes is answered with RequestTimeout. Nothing accepted is dropped: every accepted
request's future is completed with a result or an error, also at shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from app.engine.base import Engine, GroundingRequest
from app.errors import ChordError
from app.result import GroundingResult

logger = logging.getLogger(__name__)


class QueueFull(ChordError):
    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ChordError):
    status = 504
    code = "timeout"


class ShuttingDown(ChordError):
    status = 503
    code = "shutting_down"


class BatchObserver(Protocol):
    """Receives timings; the server's metrics implement it."""

    def batch_done(self, size: int, queue_seconds: Sequence[float], model_seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass
class _Job:
    request: GroundingRequest
    future: Future
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = 0.0


class BatchScheduler:
    """One queue, one model. ``submit`` is thread-safe and never blocks."""

    def __init__(
        self,
        engine: Engine,
        max_batch_size: int = 8,
        max_batch_wait_ms: float = 10.0,
        max_queue: int = 64,
        request_timeout_s: float = 120.0,
        observer: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_ms / 1000
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._observer = observer
        self._waiting: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._prepared: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._model_busy = threading.Event()
        self._last_batch_seconds = 1.0
        self._threads = [
            threading.Thread(target=self._collect_loop, name="chord-batch-collect", daemon=True),
            threading.Thread(target=self._model_loop, name="chord-batch-model", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Requests accepted and not yet in the model."""
        return self._waiting.qsize()

    def submit(self, request: GroundingRequest) -> Future:
        """Queue one request; QueueFull at once when the queue is full."""
        if self._stop.is_set():
            raise ShuttingDown("the server is shutting down")
        job = _Job(request, Future())
        job.deadline = job.enqueued + self.request_timeout_s
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"busy: {self.max_queue} requests are already waiting; try again in a moment",
                retry_after_s=self._retry_after(),
            ) from None
        self._report_depth()
        return job.future

    def ground(self, request: GroundingRequest) -> GroundingResult:
        """Submit and wait (from a worker thread); RequestTimeout after the request timeout."""
        future = self.submit(request)
        try:
            return future.result(timeout=self.request_timeout_s)
        except TimeoutError:
            future.cancel()
            raise RequestTimeout(f"no answer within REQUEST_TIMEOUT_S={self.request_timeout_s:g} s") from None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, finish what the model holds, fail what is still queued."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        while True:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            _fail(job, ShuttingDown("the server shut down before this request ran"))

    # --- threads ---------------------------------------------------------------------------
    def _collect_loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            started = time.monotonic()
            try:
                prepared = _prepare(self.engine, [job.request for job in batch])
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch-mates
                logger.warning("preparing a batch of %d failed (%s); preparing one by one", len(batch), exc)
                for job in batch:
                    self._prepared.put(([job], started, None))
                continue
            self._prepared.put((batch, started, prepared))

    def _next_batch(self) -> list[_Job]:
        try:
            first = self._waiting.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        # An idle model takes what is already queued at once: waiting only helps while it is busy.
        idle = not self._model_busy.is_set() and self._prepared.empty()
        fill_until = time.monotonic() + (0.0 if idle else self.max_batch_wait_s)
        while len(batch) < self.max_batch_size:
            remaining = fill_until - time.monotonic()
            try:
                batch.append(self._waiting.get(timeout=remaining) if remaining > 0 else self._waiting.get_nowait())
            except queue.Empty:
                break
        self._report_depth()
        now = time.monotonic()
        live = []
        for job in batch:
            if job.future.cancelled():
                continue
            if now > job.deadline:
                limit = f"REQUEST_TIMEOUT_S={self.request_timeout_s:g} s"
                _fail(job, RequestTimeout(f"waited more than {limit} in the queue"))
                continue
            live.append(job)
        return live

    def _model_loop(self) -> None:
        while not (self._stop.is_set() and self._prepared.empty()):
            try:
                batch, collected_at, prepared = self._prepared.get(timeout=0.1)
            except queue.Empty:
                continue
            self._model_busy.set()
            try:
                self._run(batch, collected_at, prepared)
            finally:
                self._model_busy.clear()

    def _run(self, batch: list[_Job], collected_at: float, prepared) -> None:
        started = time.monotonic()
        requests = [job.request for job in batch]
        try:
            results = _generate(self.engine, requests, prepared)
        except Exception as exc:  # noqa: BLE001
            if len(batch) > 1:
                logger.warning("a batch of %d failed (%s); running its requests one by one", len(batch), exc)
                for job in batch:
                    self._run([job], collected_at, None)
                return
            logger.exception("request failed in the model")
            _fail(batch[0], exc)
            return
        model_seconds = time.monotonic() - started
        self._last_batch_seconds = model_seconds
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):  # an engine may fail one request of a batch alone
                _fail(job, result)
            elif not job.future.cancelled():
                job.future.set_result(result)
        if self._observer is not None:
            self._observer.batch_done(len(batch), [collected_at - job.enqueued for job in batch], model_seconds)

    def _retry_after(self) -> int:
        batches_ahead = max(1, self.max_queue // self.max_batch_size)
        return max(1, round(batches_ahead * self._last_batch_seconds))

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self._waiting.qsize())


def _prepare(engine: Engine, requests: list[GroundingRequest]):
    prepare = getattr(engine, "prepare", None)
    return prepare(requests) if prepare is not None else None


def _generate(engine: Engine, requests: list[GroundingRequest], prepared) -> list[GroundingResult]:
    if prepared is not None:
        return engine.generate(requests, prepared)
    return engine.ground(requests)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
