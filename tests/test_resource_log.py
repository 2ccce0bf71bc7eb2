"""The resource log (scripts/resource_log.py): well-formed JSON lines, and ALERT lines past the thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_server import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from resource_log import Counts, alerts, parse_counts  # noqa: E402

from app.settings import load_settings  # noqa: E402

LINE_KEYS = {"ts", "cpu_percent", "memory_percent", "server", "model_process", "gpus", "disks"}


def run_once(tmp_path: Path, port: int, **env: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    out_file = tmp_path / "metrics.log"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "resource_log.py"), "--once", "--port", str(port),
         "--output", str(out_file), "--log-dir", str(tmp_path)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out_file.read_text().splitlines()], done


def record(**changes) -> dict:
    base = {
        "ts": "2026-01-01T00:00:00+00:00", "memory_percent": 50.0, "gpus": [], "disks": [],
        "requests": 100, "errors": 0, "success_rate_percent": 100.0, "latency_avg_s": 1.0,
    }  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),  # all fine
        ({"memory_percent": 90.0}, []),  # at the threshold, not past it
        ({"memory_percent": 90.1}, ["memory_percent"]),  # the source's memory alert
        ({"gpus": [{"index": 1, "percent": 95.0}]}, ["gpu1_memory_percent"]),  # per GPU
        ({"disks": [{"folder": "logs", "percent": 97.0}]}, ["disk_logs_percent"]),  # a full disk
        ({"success_rate_percent": 94.9}, ["success_rate_percent"]),  # under 95 %
        ({"success_rate_percent": None, "requests": 0}, []),  # no requests: no rate, no alert
        ({"latency_avg_s": 5.5}, ["latency_avg_s"]),  # over 5 s on average
        ({"errors": 10}, []),  # 10 is not more than 10
        ({"errors": 11}, ["errors"]),  # more than 10 errors
        ({"requests": None, "errors": None, "success_rate_percent": None, "latency_avg_s": None}, []),  # server down
    ],
)
def test_alerts_fire_past_each_threshold(changes, expected):
    found = alerts(record(**changes), load_settings())
    assert [alert["alert"] for alert in found] == expected
    assert all(alert["level"] == "ALERT" and alert["message"].startswith("ALERT ") for alert in found)


def test_counts_since_the_last_line_and_after_a_restart():
    text = (
        'chord_requests_total{endpoint="/api/ground",status="200"} 8\n'
        'chord_requests_total{endpoint="/api/ground",status="422"} 1\n'
        'chord_requests_total{endpoint="/api/ground",status="503"} 1\n'
        'chord_errors_total{code="busy"} 1\nchord_errors_total{code="empty_prompt"} 1\n'
        'chord_request_seconds_sum{endpoint="/api/ground"} 20\nchord_request_seconds_count{endpoint="/api/ground"} 10\n'
    )
    now = parse_counts(text)
    assert now == Counts(requests=10, ok=9, errors=2, latency_sum=20, latency_count=10)  # a 422 is not Chord failing
    assert now.since(Counts(4, 4, 0, 8, 4)) == Counts(6, 5, 2, 12, 6)
    assert now.since(Counts(50, 50, 0, 100, 50)) == now  # the server restarted: its counters began again


def test_a_line_without_a_server_is_well_formed_and_a_low_threshold_writes_an_alert(tmp_path):
    lines, done = run_once(tmp_path, free_port(), ALERT_MEMORY_PERCENT="0.01", ALERT_DISK_PERCENT="0.01")
    first, *rest = lines
    assert LINE_KEYS <= set(first) and first["server"] is None and "metrics_error" in first
    names = [line["alert"] for line in rest]
    assert names[:2] == ["memory_percent", "disk_logs_percent"] and set(names[2:]) <= {"disk_model_percent"}
    assert all(line["level"] == "ALERT" for line in rest)
    assert "ALERT memory_percent" in done.stderr


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_lines_from_a_running_server_count_the_requests_since_the_last_line(server, sample_png, tmp_path):
    import httpx

    out_file = tmp_path / "metrics.log"
    monitor = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "resource_log.py"), "--port", server.url.rsplit(":", 1)[1],
         "--output", str(out_file), "--log-dir", str(tmp_path)],
        env={**os.environ, "RESOURCE_LOG_INTERVAL_S": "1", "ALERT_LATENCY_S": "0.000001"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not records(out_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = len(records(out_file))  # the first line counts everything since the server started
        for prompt in ("the red square", ""):  # one answer and one 422 (an error, not a failure of Chord)
            with open(sample_png, "rb") as handle:
                httpx.post(f"{server.url}/api/ground", files={"image": handle}, data={"prompt": prompt}, timeout=120)
        while time.monotonic() < deadline:
            later = [r for r in records(out_file)[seen:] if "level" not in r]
            if sum(r["requests"] for r in later) >= 2 and later[-1]["requests"] == 0:
                break
            time.sleep(0.2)
    finally:
        monitor.terminate()
        monitor.wait(timeout=15)
    lines = records(out_file)[seen:]
    busy = next(r for r in lines if r.get("requests"))
    shown = lines[lines.index(busy) : lines.index(busy) + 2]  # the line and its ALERT, as written
    print("\n" + "\n".join(json.dumps(r, separators=(",", ":")) for r in shown))
    later = [r for r in lines if "level" not in r]
    assert all(LINE_KEYS <= set(r) and "metrics_error" not in r for r in later)
    assert sum(r["requests"] for r in later) == 2 and sum(r["errors"] for r in later) == 1
    assert busy["server"]["pid"] == server.serving_pid and busy["server"]["rss_bytes"] > 0
    assert busy["model_process"] is None or busy["model_process"]["rss_bytes"] > 0
    assert busy["success_rate_percent"] == 100.0 and busy["latency_avg_s"] > 0
    alert = lines[lines.index(busy) + 1]
    assert alert["level"] == "ALERT" and alert["alert"] == "latency_avg_s"
