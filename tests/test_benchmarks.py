"""The benchmark scripts run and report (numbers are for people; nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from app.engine.tiny_checkpoint import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_gpu import shape_config  # noqa: E402


@pytest.mark.parametrize(
    ("shape", "parameters"),
    [("7b", 8_292_166_656), ("3b", 3_754_622_976)],  # the published checkpoints' parameter counts
)
def test_real_shapes_match_the_published_models(shape, parameters):
    config = shape_config(shape, build_tokenizer())
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu_with_the_tiny_shape(tmp_path):
    out = tmp_path / "bench_gpu.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_gpu.py", "--tokens", "6", "--concurrency", "1,2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    (result,) = report["runs"]
    assert result["visual_tokens"] == 999  # 1024x768 at the default resize
    assert result["decode_ms_per_token"] > 0 and result["bandwidth_floor_ms_per_token"] > 0
    assert set(result["req_per_s"]) == {"1", "2"}
    assert "decode" in run.stdout and "floor" in run.stdout


@pytest.mark.slow
def test_bench_gpu_loads_int8_through_bitsandbytes_and_compares_the_image_cache(tmp_path):
    out = tmp_path / "bench_gpu.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_gpu.py", "--tokens", "4", "--concurrency", "1", "--quantization", "int8",
         "--image-cache", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (result,) = json.loads(out.read_text())["runs"]
    assert result["quantization"] == "int8" and result["decode_ms_per_token"] > 0
    assert set(result["repeat_ratio"]) == {"off", "on"}
    assert "8 images / 1 image" in run.stdout


@pytest.mark.slow
def test_bench_image_cache_prints_the_ratio_and_the_answers_match(tmp_path):
    out = tmp_path / "bench_image_cache.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_image_cache.py", "--rounds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]  # the script fails when an answer differs
    report = json.loads(out.read_text())
    assert report["identical_answers"] is True and report["visual_tokens"] == 999
    # One round: the eight questions about one image miss once and hit seven times, the eight images miss.
    assert report["counts"]["prefix"]["hits"] == 7
    assert "ratio (eight images / one image): cache on" in run.stdout


@pytest.mark.slow
@pytest.mark.soak
def test_bench_load_measures_a_batched_and_a_naive_server(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench_load.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_load.py", "--model", tiny_checkpoint, "--clients", "4", "--requests", "16",
         "--overhead-requests", "2", "--server-env", "MAX_NEW_TOKENS=4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    batched, naive = report["batched"]["load"], report["naive"]["load"]
    for load in (batched, naive):
        assert load["ok"] == 16 and load["errors"] == {}
        assert load["p50_ms"] <= load["p99_ms"]
        assert load["children_cpu_ms_per_request"] > 0  # the model generated in its own process
    assert naive["mean_batch"] == 1.0  # MAX_BATCH_SIZE=1: one request per generation
    assert naive["mean_rows_decoding"] is None  # ... and no continuous batching
    assert batched["mean_batch"] >= 1.0
    assert batched["mean_rows_decoding"] >= 1.0  # the batched server decoded continuously
    assert batched["client_cpu_ms_per_request"] > 0
    assert report["throughput_ratio"] == round(batched["req_per_s"] / naive["req_per_s"], 2)
    assert "throughput ratio batched/naive" in run.stdout and "mean batch" in run.stdout


@pytest.mark.slow
@pytest.mark.soak
def test_the_locustfile_drives_the_server_headless_without_failures(server, tmp_path):
    csv = tmp_path / "locust"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "scripts/locustfile.py", "--host", server.url, "--headless",
         "-u", "4", "-r", "4", "-t", "6s", "--exit-code-on-error", "1", "--csv", str(csv), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    rows = (tmp_path / "locust_stats.csv").read_text().splitlines()
    header = rows[0].split(",")
    ground = dict(zip(header, next(r for r in rows if ",/api/ground," in r).split(","), strict=True))
    assert int(ground["Request Count"]) > 0 and int(ground["Failure Count"]) == 0
