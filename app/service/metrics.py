"""Prometheus metrics, in a registry of the app's own (two apps in one process do not collide)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.engine.image_cache import CacheCounts

# Per CUDA device ("cuda:0"): (bytes allocated, bytes reserved).
GpuMemory = dict[str, tuple[float, float]]

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "chord_requests", "Grounding requests by endpoint and HTTP status.", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "chord_request_seconds", "Time to answer a grounding request, by endpoint.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter("chord_errors", "Failed requests by error code.", ["code"], registry=self.registry)
        self.auth_failures = Counter(
            "chord_auth_failures", "Refused API keys (kind=api_key) and failed UI logins (kind=ui_login).", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "chord_in_flight_requests", "Grounding requests queued or running.", registry=self.registry
        )
        self.decode_pixels = Gauge(
            "chord_decode_pixels_in_flight",
            "Decoded image pixels held by requests now (bounded by DECODE_BUDGET_PIXELS).",
            registry=self.registry,
        )
        self.model_ready = Gauge("chord_model_ready", "1 once the model has loaded, else 0.", registry=self.registry)
        self.model_load_seconds = Gauge(
            "chord_model_load_seconds", "Seconds the model took to load.", registry=self.registry
        )
        self.queue_depth_gauge = Gauge("chord_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self.batch_size = Histogram(
            "chord_batch_size",
            "Requests per batched generation (with continuous batching: requests that joined"
            " the running batch together).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "chord_queue_seconds", "Time a request waited before its batch was formed.",
            buckets=QUEUE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_seconds = Histogram(
            "chord_model_seconds", "Time one batch spent in the model (with continuous batching: from joining the"
            " running batch until its last request was done).", buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.decode_rows = Histogram(
            "chord_decode_rows", "With continuous batching, per request: rows decoded alongside it, averaged over"
            " its decoding steps.", buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge("chord_model_info", "1 for the model serving now.", ["model"], registry=self.registry)
        self._gpu_memory: Callable[[], GpuMemory] = dict

    # BatchObserver, called by the scheduler's threads.
    def batch_done(self, size: int, queue_seconds, model_seconds: float) -> None:
        self.batch_size.observe(size)
        for waited in queue_seconds:
            self.queue_seconds.observe(waited)
        self.model_seconds.observe(model_seconds)

    def rows_decoding(self, mean_rows: float) -> None:
        self.decode_rows.observe(mean_rows)

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def watch_model(self, seconds_since_progress: Callable[[], float | None], stalled: Callable[[], bool]) -> None:
        """The model's progress and the model process's memory, read from whatever model serves at each scrape."""
        since = Gauge(
            "chord_seconds_since_progress",
            "Seconds since the model last made progress (a decoding step, a prefill); grows while idle.",
            registry=self.registry,
        )
        since.set_function(lambda: seconds_since_progress() or 0.0)
        Gauge(
            "chord_model_stalled", "1 while work waits and the model has made no progress for STALL_TIMEOUT_S.",
            registry=self.registry,
        ).set_function(lambda: 1.0 if stalled() else 0.0)  # fmt: skip
        Gauge(
            "chord_model_process_resident_memory_bytes",
            "Resident memory of the server's child processes (the model's own process, MODEL_PROCESS=true).",
            registry=self.registry,
        ).set_function(_children_rss)
        self.registry.register(GpuMemoryCollector(lambda: self._gpu_memory()))

    def serving_model(self, model: str, gpu_memory: Callable[[], GpuMemory]) -> None:
        """The model that serves from now on: its name as the one ``chord_model_info`` label set to 1 (a swap
        shows as the label changing) and its GPU memory."""
        self.model_info.clear()
        self.model_info.labels(model).set(1)
        self._gpu_memory = gpu_memory

    def watch_image_cache(self, read_counts: Callable[[], dict[str, CacheCounts]]) -> None:
        """The image cache's hits, misses and bytes by stage, read from the engine on each scrape."""
        self.registry.register(_ImageCacheCollector(read_counts))

    def observe(self, endpoint: str, status: int, seconds: float, error_code: str | None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if error_code is not None:
            self.errors.labels(error_code).inc()


class GpuMemoryCollector(Collector):
    """Per CUDA device of the serving model: bytes torch holds in tensors and bytes its allocator reserved, and
    the device's total (nvidia-smi, read once). Nothing on the CPU."""

    def __init__(self, read: Callable[[], GpuMemory]):
        self._read = read
        self._totals: dict[str, float] = {}

    def collect(self):
        used = self._read()
        allocated = GaugeMetricFamily(
            "chord_gpu_memory_allocated_bytes", "GPU memory held by torch tensors, per device.", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "chord_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching allocator, per device.",
            labels=["device"],
        )  # fmt: skip
        total = GaugeMetricFamily("chord_gpu_memory_total_bytes", "Memory of each GPU in use.", labels=["device"])
        for device, (held, cached) in sorted(used.items()):
            allocated.add_metric([device], held)
            reserved.add_metric([device], cached)
            if device not in self._totals:
                self._totals[device] = gpu_memory_total_bytes(_index(device))
            if self._totals[device]:
                total.add_metric([device], self._totals[device])
        if used:
            yield from (allocated, reserved, total)


def _index(device: str) -> int:
    """0 for "cuda:0"."""
    return int(device.partition(":")[2] or 0)


class _ImageCacheCollector(Collector):
    """Counts kept by the engine (in the model's process too): exported as they are at each scrape."""

    def __init__(self, read_counts: Callable[[], dict[str, CacheCounts]]):
        self._read_counts = read_counts

    def collect(self):
        counts = self._read_counts()
        families = {
            "hits": CounterMetricFamily(
                "chord_image_cache_hits", "Lookups that found an image's work cached (IMAGE_CACHE_MB), by stage.",
                labels=["stage"],
            ),
            "misses": CounterMetricFamily(
                "chord_image_cache_misses", "Lookups that did not find an image's work cached, by stage.",
                labels=["stage"],
            ),
            "bytes": GaugeMetricFamily(
                "chord_image_cache_bytes", "Bytes the image cache holds now, by stage.", labels=["stage"]
            ),
        }  # fmt: skip
        for stage, count in counts.items():
            for name, family in families.items():
                family.add_metric([stage], getattr(count, name))
        yield from families.values()


def _children_rss() -> float:
    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return float(total)


def gpu_memory_total_bytes(index: int = 0) -> float:
    """Total memory of visible GPU ``index`` (as torch numbers them), from nvidia-smi; 0 when it cannot be read."""
    smi = shutil.which("nvidia-smi")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if smi is None or (visible and (index >= len(visible) or visible[index].startswith("-"))):
        return 0.0
    gpu = visible[index] if visible else str(index)  # an index or a UUID, as CUDA_VISIBLE_DEVICES names it
    command = [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", gpu]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.split()[0]) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0.0
