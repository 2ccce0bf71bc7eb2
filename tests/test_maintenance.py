"""scripts/maintenance.sh: run twice on a logs folder with old and new files, offline."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def make(path: Path, text: str, age_days: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def maintenance(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "MAINT_LOG_DIR": str(tmp_path / "logs"),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "TMPDIR": str(tmp_path / "tmp"),
        "PORT": "1",  # nothing answers there: the health check warns
        "HF_ENDPOINT": "http://127.0.0.1:1",  # offline: the hub cannot be reached
        "MAINT_MODEL_REPO": "Qwen/Qwen2.5-VL-7B-Instruct",
        **env,
    }
    environ.pop("HF_HUB_OFFLINE", None)
    environ.update(env)
    return subprocess.run(
        [str(ROOT / "scripts" / "maintenance.sh")], env=environ, capture_output=True, text=True, timeout=120
    )


def test_two_runs_remove_exactly_the_old_files_and_work_offline(tmp_path):
    logs = tmp_path / "logs"
    make(logs / "chord.log", "live\n", age_days=30)  # a live log stays, however old
    make(logs / "watchdog.log", "live\n")
    make(logs / "chord.log.1", "recent backup\n", age_days=1)  # compressed, kept
    make(logs / "chord.log.2", "old backup\n", age_days=10)  # compressed, then deleted
    make(logs / "metrics.log.3.20260101-000000.gz", "old archive\n", age_days=8)  # deleted
    make(logs / "metrics.log.1.20260301-000000.gz", "new archive\n", age_days=6)  # kept
    make(tmp_path / "gradio" / "abc" / "old.png", "x", age_days=2)  # deleted, with its empty folder
    make(tmp_path / "gradio" / "def" / "new.png", "x", age_days=0.1)  # kept
    old_video = make(tmp_path / "tmp" / "chord-video-old" / "frame.jpg", "x").parent
    os.utime(old_video, (time.time() - 2 * DAY,) * 2)  # deleted
    make(tmp_path / "tmp" / "chord-batch-new" / "out.jsonl", "x")  # kept
    make(tmp_path / "tmp" / "someone-else-old" / "f", "x", age_days=30)  # not Chord's: kept

    first = maintenance(tmp_path)
    after_first = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    second = maintenance(tmp_path)
    after_second = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    print(f"\n{first.stdout}")

    assert after_first == after_second  # idempotent: the second run finds nothing to do
    logs_left = sorted(p.name for p in logs.iterdir())
    assert logs_left[:2] == ["chord.log", "chord.log.1." + logs_left[1].split(".", 3)[3]]
    assert logs_left[2:] == ["metrics.log.1.20260301-000000.gz", "watchdog.log"]
    assert gzip.decompress((logs / logs_left[1]).read_bytes()) == b"recent backup\n"
    assert after_first == sorted(
        [f"logs/{name}" for name in logs_left]
        + ["gradio/def/new.png", "tmp/chord-batch-new/out.jsonl", "tmp/someone-else-old/f"]
    )
    assert not (tmp_path / "gradio" / "abc").exists()
    for run in (first, second):
        assert run.returncode == 1, run.stdout + run.stderr  # the one warning: nothing answers /health
        warnings = [line for line in run.stdout.splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and "health" in warnings[0], run.stdout
        assert "model update: cannot check Qwen/Qwen2.5-VL-7B-Instruct (the hub cannot be reached)" in run.stdout
    assert "deleted chord.log.2." in first.stdout and "deleted metrics.log.3.20260101-000000.gz" in first.stdout
    assert "old logs: 0 deleted" in second.stdout


def test_hub_offline_mode_is_cannot_check_and_a_low_disk_warns(tmp_path):
    (tmp_path / "logs").mkdir()
    run = maintenance(tmp_path, HF_HUB_OFFLINE="1", MAINT_MIN_FREE_PERCENT="100")
    assert "model update: cannot check Qwen/Qwen2.5-VL-7B-Instruct (HF_HUB_OFFLINE=1)" in run.stdout
    assert "WARNING: low disk" in run.stdout and run.returncode == 1
