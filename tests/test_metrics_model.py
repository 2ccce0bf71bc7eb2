"""What /metrics says about the serving model: its name as a label, and GPU memory per device."""

from __future__ import annotations

from prometheus_client import generate_latest

from app.service.metrics import Metrics


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_gpu_memory_is_reported_per_device_allocated_and_reserved():
    metrics = Metrics()
    metrics.watch_model(lambda: 1.5, lambda: False)
    assert "chord_gpu_memory_allocated_bytes" not in scrape(metrics)  # nothing on the CPU
    metrics.serving_model("m", lambda: {"cuda:0": (1e9, 2e9), "cuda:1": (3e9, 4e9)})  # a model split over two GPUs
    text = scrape(metrics)
    assert 'chord_gpu_memory_allocated_bytes{device="cuda:0"} 1e+09' in text
    assert 'chord_gpu_memory_reserved_bytes{device="cuda:0"} 2e+09' in text
    assert 'chord_gpu_memory_allocated_bytes{device="cuda:1"} 3e+09' in text
    assert 'chord_gpu_memory_reserved_bytes{device="cuda:1"} 4e+09' in text
    assert "chord_seconds_since_progress 1.5" in text


def test_a_swap_changes_the_model_label():
    metrics = Metrics()
    metrics.watch_model(lambda: None, lambda: False)
    metrics.serving_model("old-model", dict)
    assert 'chord_model_info{model="old-model"} 1.0' in scrape(metrics)
    metrics.serving_model("new-model", dict)
    text = scrape(metrics)
    assert 'chord_model_info{model="new-model"} 1.0' in text and "old-model" not in text
