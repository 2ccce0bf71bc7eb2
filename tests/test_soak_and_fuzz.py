"""Long runs and strangers, at a size CI can afford: the soak script and schemathesis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.soak]


def test_soak_script_answers_every_request(server, tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "scripts/soak.py", "--url", server.url, "--requests", "120", "--concurrency", "8",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["unanswered"] == 0 and report["answered"] == 120
    assert report["outcomes"]["200 ok"] > 0
    assert {"400 invalid_image", "415 unsupported_media_type", "422 prompt_too_long"} <= set(report["outcomes"])
    assert report["rss_start_mb"] and report["rss_end_mb"]
    for key in ("requests_sent", "answered", "rss_start_mb", "rss_end_mb", "temp_files_start", "temp_files_end"):
        assert f"{key}:" in run.stdout


def test_schemathesis_finds_no_server_error(server):
    run = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{server.url}/openapi.json", "--checks",
         "not_a_server_error", "--max-examples", "25", "--request-timeout", "60", "--workers", "1",
         "--generation-deterministic", "--suppress-health-check", "all"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) > 50, run.stdout[-2000:]
