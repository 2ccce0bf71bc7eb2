"""The three core CLI commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, stdin="", env=None):
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_parse_needs_no_model_and_prints_original_pixels():
    answer = '```json\n[{"bbox_2d": [161, 119, 322, 238], "label": "white vase"}]\n```'
    out = run_cli(
        "parse", "--family", "qwen2.5-vl", "--image-size", "1280x960", "--input-size", "644x476", stdin=answer
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["boxes"] == [[320, 240, 640, 480]]
    assert result["labels"] == ["white vase"] and result["points"] == []


def test_parse_qwen2_vl_relative_coordinates():
    answer = "<|object_ref_start|>猫<|object_ref_end|><|box_start|>(500,500),(1000,1000)<|box_end|>"
    out = run_cli("parse", "--family", "qwen2-vl", "--image-size", "640x480", stdin=answer)
    assert json.loads(out.stdout)["boxes"] == [[320, 240, 640, 480]]
    assert json.loads(out.stdout)["labels"] == ["猫"]


def test_parse_without_input_size_for_qwen2_5_vl_says_what_is_missing():
    out = run_cli("parse", "--family", "qwen2.5-vl", "--image-size", "640x480", stdin="[]")
    assert out.returncode == 2 and "--input-size" in out.stderr


@pytest.mark.slow  # two interpreters: one builds a checkpoint, one loads it and grounds
def test_tiny_model_then_ground_with_annotated_output(tmp_path):
    checkpoint = tmp_path / "tiny"
    built = run_cli("tiny-model", str(checkpoint))
    assert built.returncode == 0, built.stderr
    assert (checkpoint / "model.safetensors").stat().st_size < 1_000_000
    image_path = tmp_path / "scene.png"
    Image.new("RGB", (320, 240), (150, 160, 170)).save(image_path)
    out_path = tmp_path / "annotated.png"
    grounded = run_cli(
        "ground", str(image_path), "the white vase", "--out", str(out_path),
        env={"MODEL_PATH": str(checkpoint), "DEVICE": "cpu", "MAX_NEW_TOKENS": "16"},
    )  # fmt: skip
    assert grounded.returncode == 0, grounded.stderr
    result = json.loads(grounded.stdout)
    assert set(result) >= {"boxes", "labels", "scores", "points", "text", "image_size", "model", "latency_ms"}
    assert result["image_size"] == [320, 240] and result["model"] == "tiny"
    assert Image.open(out_path).size == (320, 240)
    assert "settings:" in grounded.stderr  # effective settings logged once at start


def test_ground_with_a_missing_model_fails_with_the_fix(tmp_path):
    image_path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image_path)
    out = run_cli("ground", str(image_path), "x", env={"MODEL_PATH": str(tmp_path / "nothing")})
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "scripts/download_model.sh" in out.stderr


def test_ground_with_a_bad_setting_names_the_key(tmp_path):
    out = run_cli("ground", "x.png", "x", env={"DTYPE": "half"})
    assert out.returncode == 1 and "DTYPE='half'" in out.stderr
