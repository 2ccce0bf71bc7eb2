"""``python -m app batch`` as a user runs it: a folder with broken files, resume after a kill, --server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

ROOT = Path(__file__).resolve().parent.parent
PHRASES = ["the red square", "the blue circle"]


def tool_env(checkpoint: str, **extra: str) -> dict:
    return {
        **os.environ,
        "MODEL_PATH": checkpoint,
        "DEVICE": "cpu",
        "MAX_NEW_TOKENS": "16",
        "MAX_PIXELS": "50176",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def batch_command(input_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app", "batch", str(input_dir), PHRASES[0], "--phrase", PHRASES[1],
            "--out", str(out_dir), *extra]  # fmt: skip


def make_images(folder: Path, count: int) -> list[str]:
    """``count`` readable images plus a corrupt PNG and a text file named .jpg; returns the readable names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image = Image.new("RGB", (96 + 8 * (i % 5), 72), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        draw.rectangle((5 + i % 20, 10, 40, 50), fill=(200, 30, 30))
        draw.ellipse((50, 10, 90, 50), fill=(30, 90, 200))
        name = f"img{i:03d}.png" if i % 3 else f"img{i:03d}.jpg"
        image.save(folder / name)
        names.append(name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 30)
    (folder / "notes.jpg").write_text("a text file with an image extension")
    (folder / "readme.txt").write_text("not an image extension: never looked at")
    return names


def lines_of(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the last line must be complete"
    return [json.loads(line) for line in raw.splitlines()]


def run_tool(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # runs `python -m app batch` twice, each loading the model in a new interpreter
def test_batch_folder_with_broken_files_writes_jsonl_coco_and_annotated(tiny_checkpoint, tmp_path):
    images = tmp_path / "photos"
    readable = make_images(images, 5)
    (images / "sub").mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(images / "sub" / "deep.webp")
    out, coco_path = tmp_path / "out", tmp_path / "out" / "coco.json"
    command = batch_command(images, out, "--recursive", "--annotated", "--coco", str(coco_path), "--batch-size", "3")
    done = run_tool(command, tool_env(tiny_checkpoint))
    assert done.returncode == 0, done.stderr
    assert "done: 8 images (0 already done), 0 boxes, 2 failures" in done.stdout
    assert "img/s" in done.stderr and "skipped" in done.stderr  # progress bar with rate; unreadable files named

    lines = lines_of(out / "results.jsonl")
    by_path = {line["path"]: line for line in lines}
    assert len(lines) == len(by_path) == 8
    assert set(by_path) == {*readable, "sub/deep.webp", "corrupt.png", "notes.jpg"}
    for name in [*readable, "sub/deep.webp"]:
        line = by_path[name]
        assert "error" not in line and line["phrases"] == PHRASES
        assert line["image_size"] == list(Image.open(images / name).size)
        assert len(line["boxes"]) == len(line["labels"]) == len(line["scores"])
        assert line["needs_review"] is (line["confidence"] is None or line["confidence"] < 0.7)
        assert isinstance(line["text"], str)
        assert Image.open(out / "annotated" / name).size == tuple(line["image_size"])
    for name in ["corrupt.png", "notes.jpg"]:
        assert by_path[name]["error"]["code"] == "invalid_image"
        assert "image_size" not in by_path[name] and not (out / "annotated" / name).exists()

    coco = COCO(str(coco_path))
    assert len(coco.getImgIds()) == 6
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == PHRASES
    assert {img["file_name"] for img in coco.loadImgs(coco.getImgIds())} == {*readable, "sub/deep.webp"}

    again = run_tool(command, tool_env(tiny_checkpoint))
    assert again.returncode == 0, again.stderr
    assert "done: 0 images (8 already done)" in again.stdout
    assert len(lines_of(out / "results.jsonl")) == 8


def test_batch_refuses_to_mix_phrases_in_one_output(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"path": "a.png", "phrases": ["a cat"], "boxes": []}\n')
    make_images(tmp_path / "photos", 1)
    done = subprocess.run(
        batch_command(tmp_path / "photos", out), cwd=ROOT, env=tool_env(tiny_checkpoint), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "other phrases" in done.stderr
    assert "loaded" not in done.stderr  # refused before the model loads


def _run_until_lines(command, env, results: Path, at_least: int) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= at_least:
            return process
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{process.stderr.read()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("no result lines appeared")


@pytest.mark.slow
def test_batch_killed_then_interrupted_then_resumed_has_every_image_once(tiny_checkpoint, tmp_path):
    images = tmp_path / "photos"
    readable = make_images(images, 60)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    env = tool_env(tiny_checkpoint, MAX_NEW_TOKENS="32")
    command = batch_command(images, out, "--batch-size", "2", "--coco", str(out / "coco.json"))

    killed = _run_until_lines(command, env, results, at_least=3)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    after_kill = lines_of(results)
    assert 3 <= len(after_kill) < 62, "the kill should land mid-way"
    with results.open("ab") as handle:  # what a crash in the middle of a write could leave on some filesystems
        handle.write(b'{"path": "img0')

    interrupted = _run_until_lines(command, env, results, at_least=len(after_kill) + 4)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=60)
    if interrupted.returncode != 0:  # it may have finished just before the signal arrived
        assert interrupted.returncode == 130 and "re-run the same command to resume" in stderr, stderr
    lines = lines_of(results)
    assert len(lines) >= len(after_kill) + 4

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = lines_of(results)
    counts = Counter(line["path"] for line in final)
    assert [path for path, n in counts.items() if n > 1] == []  # no duplicate
    assert set(counts) == {*readable, "corrupt.png", "notes.jpg"}  # no missing image
    assert f"({len(lines)} already done)" in resumed.stdout
    assert len(json.loads((out / "coco.json").read_text())["images"]) == len(readable)


@pytest.mark.slow
def test_batch_against_the_running_server(server, tiny_checkpoint, tmp_path):
    images = tmp_path / "photos"
    readable = make_images(images, 4)
    out = tmp_path / "out"
    command = batch_command(images, out, "--server", server.url, "--batch-size", "3", "--coco", str(out / "c.json"))
    done = subprocess.run(command, cwd=ROOT, env=tool_env("/nonexistent/model"), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "done: 6 images (0 already done), 0 boxes, 2 failures" in done.stdout
    by_path = {line["path"]: line for line in lines_of(out / "results.jsonl")}
    assert set(by_path) == {*readable, "corrupt.png", "notes.jpg"}
    for name in readable:
        assert by_path[name]["image_size"] == list(Image.open(images / name).size)
        assert by_path[name]["phrases"] == PHRASES and "error" not in by_path[name]
    assert by_path["notes.jpg"]["error"]["code"] == "invalid_image"
    log = server.log()
    assert "endpoint=/api/ground/batch" in log  # the server did the grounding, not this process
    assert len(COCO(str(out / "c.json")).getImgIds()) == 4
