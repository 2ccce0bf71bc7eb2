"""Dynamic batching in front of one engine: a bounded queue, batches, timeouts, backpressure.

Every caller (UI, REST, batch tools) submits one request and gets a future. A collector thread
prepares requests as they arrive (processor work, in chunks of whatever is queued at that
moment), so preparation overlaps the batch that is generating. The model thread forms its next
batch when it is free, from everything already prepared, up to ``max_batch_size``: a batch is
never closed early while the model is still busy. When fewer are ready it waits for the batch
to fill until the oldest request has waited ``max_batch_wait_ms`` (a lone request on a quiet
server starts at once). Each caller gets its own result.

With an engine that can batch continuously (``engine.continuous``) and ``max_batch_size`` above
1, a batch does not have to wait for the one before it: prepared requests join the running batch
between two decoding steps, as long as fewer than ``max_batch_size`` rows are decoding, and each
leaves it the moment its answer is done. ``max_batch_size`` 1 is always the naive server: one
``generate`` per request.
A full queue refuses at once (QueueFull, with a retry hint); a request still queued when its
timeout passes is answered with RequestTimeout. Nothing accepted is dropped: every accepted
request's future is completed with a result or an error, also at shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from app.engine.base import Engine, GroundingRequest
from app.errors import QueueFull, RequestTimeout, ShuttingDown
from app.grounding.result import GroundingResult

logger = logging.getLogger(__name__)


CONTINUOUS_CHUNK = 4  # requests prepared together when batching continuously (see docs/benchmarks.md)


class BatchObserver(Protocol):
    """Receives timings; the server's metrics implement it."""

    def batch_done(self, size: int, queue_seconds: Sequence[float], model_seconds: float) -> None: ...

    def rows_decoding(self, mean_rows: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass
class _Job:
    request: GroundingRequest
    future: Future
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = 0.0
    retried: bool = False  # run again once after failing together with others (continuous batching)


@dataclass
class _Admitted:
    """Requests that joined the running batch together, until the last of them is done."""

    jobs: list[_Job]
    started: float
    remaining: int


@dataclass
class _Chunk:
    """Jobs prepared together; ``prepared`` is None for engines without ``prepare``."""

    jobs: list[_Job]
    prepared: object | None


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
        continuous: bool = True,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_ms / 1000
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._observer = observer
        self._batching = engine.batching
        self._prepares = self._batching is not None
        self.continuous = continuous and max_batch_size > 1 and self._prepares and self._batching.continuous
        self._in_flight = 0  # rows decoding (continuous batching)
        # Continuous batching prepares in small chunks: the first requests of a burst join the
        # running batch while the rest are still being prepared.
        self._chunk_size = min(max_batch_size, CONTINUOUS_CHUNK) if self.continuous else max_batch_size
        self._waiting: queue.Queue[_Job] = queue.Queue()
        self._ready: deque[_Chunk] = deque()  # prepared, not yet in the model
        self._ready_changed = threading.Condition()
        self._accepted = 0  # accepted and not yet in the model: what MAX_QUEUE bounds
        self._accepted_lock = threading.Lock()
        self._preparing = False
        self._stop = threading.Event()
        self._idle_since = time.monotonic()
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
        return self._accepted

    def submit(self, request: GroundingRequest) -> Future:
        """Queue one request; QueueFull at once when the queue is full."""
        if self._stop.is_set():
            raise ShuttingDown("the server is shutting down")
        job = _Job(request, Future())
        job.deadline = job.enqueued + self.request_timeout_s
        with self._accepted_lock:
            if self._accepted >= self.max_queue:
                raise QueueFull(
                    f"busy: {self.max_queue} requests are already waiting; try again in a moment",
                    retry_after_s=self._retry_after(),
                )
            self._accepted += 1
        self._waiting.put(job)
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
        """Stop taking work, finish the batch the model holds, fail what is still queued."""
        self._stop.set()
        with self._ready_changed:
            self._ready_changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        with self._ready_changed:  # rows already decoding finish (continuous batching)
            self._ready_changed.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
        leftovers = []
        with self._ready_changed:
            while self._ready:
                leftovers.extend(self._ready.popleft().jobs)
        while True:
            try:
                leftovers.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        self._left_queue(len(leftovers))
        for job in leftovers:
            _fail(job, ShuttingDown("the server shut down before this request ran"))

    # --- collector: prepare what arrives -----------------------------------------------------
    def _collect_loop(self) -> None:
        while not self._stop.is_set():
            jobs = self._take_waiting()
            if not jobs:
                continue
            for chunk in self._prepare_chunks(jobs):
                with self._ready_changed:
                    self._ready.append(chunk)
                    self._ready_changed.notify_all()
            with self._ready_changed:
                self._preparing = False
                self._ready_changed.notify_all()

    def _take_waiting(self) -> list[_Job]:
        """The next request and every other one already queued (up to a batch), still live."""
        try:
            first = self._waiting.get(timeout=0.1)
        except queue.Empty:
            return []
        with self._ready_changed:
            self._preparing = True
        jobs = [first]
        while len(jobs) < self._chunk_size:
            try:
                jobs.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        live = self._live(jobs)
        if len(live) < len(jobs):
            self._left_queue(len(jobs) - len(live))
        if not live:
            with self._ready_changed:
                self._preparing = False
        return live

    def _prepare_chunks(self, jobs: list[_Job]) -> list[_Chunk]:
        if not self._prepares:
            return [_Chunk(jobs, None)]
        try:
            return [_Chunk(jobs, self._batching.prepare([job.request for job in jobs]))]
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch-mates
            if len(jobs) == 1:
                self._left_queue(1)
                _fail(jobs[0], exc)
                return []
            logger.warning("preparing %d requests failed (%s); preparing them one by one", len(jobs), exc)
            return [chunk for job in jobs for chunk in self._prepare_chunks([job])]

    # --- model: batches from what is prepared ------------------------------------------------
    def _model_loop(self) -> None:
        while not self._stop.is_set():
            chunks = self._next_batch()
            if chunks and self.continuous:
                self._admit(chunks)
            elif chunks:
                self._run(chunks)
                self._idle_since = time.monotonic()

    def _next_batch(self) -> list[_Chunk]:
        """Everything prepared, up to a batch; waits for it to fill as the module docstring says."""
        with self._ready_changed:
            if not self._ready:
                self._ready_changed.wait(timeout=0.1)
            if not self._ready or self._stop.is_set():
                return []
            capacity = self.max_batch_size - self._in_flight  # in_flight is 0 unless batching continuously
            if len(self._ready[0].jobs) > capacity:
                self._ready_changed.wait(timeout=0.1)  # until running rows finish
                return []
            busy = self._in_flight > 0  # join the running batch now: the model is not waiting for it
            oldest = self._ready[0].jobs[0].enqueued
            lone = oldest - self._idle_since > self.max_batch_wait_s  # arrived at a quiet server
            fill_until = oldest + self.max_batch_wait_s
            while self._ready_count() < capacity and not self._stop.is_set():
                remaining = fill_until - time.monotonic()
                coming = self._preparing or not self._waiting.empty()
                if busy or remaining <= 0 or (lone and not coming):
                    break
                self._ready_changed.wait(timeout=remaining)
            chunks = [self._ready.popleft()]
            size = len(chunks[0].jobs)
            while self._ready and size + len(self._ready[0].jobs) <= capacity:
                size += len(self._ready[0].jobs)
                chunks.append(self._ready.popleft())
        self._left_queue(size)
        return [chunk for chunk in chunks if self._live(chunk.jobs)]

    def _ready_count(self) -> int:
        return sum(len(chunk.jobs) for chunk in self._ready)

    def _live(self, jobs: list[_Job]) -> list[_Job]:
        """Fail the jobs whose timeout passed while queued; the ones still wanted."""
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.done():  # cancelled by its caller
                continue
            if now > job.deadline:
                _fail(job, RequestTimeout(f"waited more than REQUEST_TIMEOUT_S={self.request_timeout_s:g} s"))
                continue
            live.append(job)
        return live

    def _run(self, chunks: list[_Chunk]) -> None:
        collected_at = time.monotonic()
        batch = [job for chunk in chunks for job in chunk.jobs]
        prepared = self._batching.merge([c.prepared for c in chunks]) if self._prepares else None
        self._generate(batch, collected_at, prepared)

    def _generate(self, batch: list[_Job], collected_at: float, prepared) -> None:
        started = time.monotonic()
        requests = [job.request for job in batch]
        try:
            results = (
                self._batching.generate(requests, prepared) if prepared is not None else self.engine.ground(requests)
            )
        except Exception as exc:  # noqa: BLE001
            if len(batch) > 1:
                logger.warning("a batch of %d failed (%s); running its requests one by one", len(batch), exc)
                for job in batch:
                    self._generate([job], collected_at, None)
                return
            logger.exception("request failed in the model")
            _fail(batch[0], exc)
            return
        model_seconds = time.monotonic() - started
        self._last_batch_seconds = model_seconds
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):  # an engine may fail one request of a batch alone
                _fail(job, result)
            elif not job.future.done():  # a job that timed out or was cancelled meanwhile keeps that outcome
                job.future.set_result(result)
        if self._observer is not None:
            self._observer.batch_done(len(batch), [collected_at - job.enqueued for job in batch], model_seconds)

    def _admit(self, chunks: list[_Chunk]) -> None:
        """Continuous batching: these requests join the running batch; each finishes on its own."""
        batch = [job for chunk in chunks for job in chunk.jobs]
        admitted = _Admitted(batch, time.monotonic(), len(batch))
        with self._ready_changed:
            self._in_flight += len(batch)
        try:
            prepared = self._batching.merge([c.prepared for c in chunks])
            rows = self._batching.start([job.request for job in batch], prepared)
        except Exception as exc:  # noqa: BLE001
            for job in batch:
                self._row_done(job, admitted, exc)
            return
        for job, row in zip(batch, rows, strict=True):
            row.add_done_callback(lambda row, job=job: self._row_done(job, admitted, row))

    def _row_done(self, job: _Job, admitted: _Admitted, outcome: Future | Exception) -> None:
        try:
            self._answer(job, admitted, outcome)
        finally:
            self._row_left(admitted)

    def _answer(self, job: _Job, admitted: _Admitted, outcome: Future | Exception) -> None:
        error = outcome if isinstance(outcome, Exception) else outcome.exception()
        if error is None:
            result, mean_rows = outcome.result()
            if not job.future.done():
                job.future.set_result(result)
            if self._observer is not None:
                self._observer.rows_decoding(mean_rows)
        elif len(admitted.jobs) > 1 and not job.retried and not self._stop.is_set():
            logger.warning("a request failed with %d others (%s); running it again", len(admitted.jobs) - 1, error)
            self._retry_alone(job)
        else:
            _fail(job, error)

    def _row_left(self, admitted: _Admitted) -> None:
        with self._ready_changed:
            self._in_flight -= 1
            admitted.remaining -= 1
            if self._in_flight == 0:
                self._idle_since = time.monotonic()
            self._ready_changed.notify_all()
        if admitted.remaining == 0 and self._observer is not None:
            queue_seconds = [admitted.started - j.enqueued for j in admitted.jobs]
            self._observer.batch_done(len(admitted.jobs), queue_seconds, time.monotonic() - admitted.started)

    def _retry_alone(self, job: _Job) -> None:
        job.retried = True
        with self._accepted_lock:
            self._accepted += 1
        self._waiting.put(job)  # prepared again, it joins the running batch again; a second failure is final

    def _left_queue(self, count: int) -> None:
        with self._accepted_lock:
            self._accepted -= count
        self._report_depth()

    def _retry_after(self) -> int:
        batches_ahead = max(1, self.max_queue // self.max_batch_size)
        return max(1, round(batches_ahead * self._last_batch_seconds))

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self._accepted)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
