"""Videos: frames sampled with PyAV, ``python -m app video``, and ``POST /api/ground/video`` with its caps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image, ImageDraw

from app.batch.video import AnnotatedVideo, sample_frames
from app.errors import InvalidVideo, VideoTooLong

ROOT = Path(__file__).resolve().parent.parent


def make_video(path: Path, seconds: float, fps: int = 10, image_wh: tuple[int, int] = (160, 120)) -> Path:
    """A red square moving right and a blue circle moving left, encoded with PyAV."""
    with AnnotatedVideo(path, fps) as video:
        for i in range(round(seconds * fps)):
            image = Image.new("RGB", image_wh, (240, 240, 230))
            draw = ImageDraw.Draw(image)
            draw.rectangle((5 + 3 * i, 30, 35 + 3 * i, 60), fill=(200, 30, 30))
            draw.ellipse((120 - 2 * i, 70, 150 - 2 * i, 100), fill=(30, 90, 200))
            video.add(image)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "shapes.mp4", seconds=3)


@pytest.mark.parametrize(
    ("fps", "indexes"),
    [
        (2, [0, 5, 10, 15, 20, 25]),  # every fifth frame of a 10 fps clip
        (0.5, [0, 20]),  # one frame every two seconds
        (1, [0, 10, 20]),  # one per second
        (50, list(range(30))),  # faster than the clip: every frame, none twice
    ],
)
def test_sample_frames_table(clip, fps, indexes):
    frames = list(sample_frames(clip, fps))
    assert [f.frame_index for f in frames] == indexes
    assert [f.timestamp for f in frames] == [round(i / 10, 3) for i in indexes]
    assert all(f.image.size == (160, 120) and f.image.mode == "RGB" for f in frames)


def test_sample_frames_caps_and_bad_input(clip, tmp_path):
    with pytest.raises(VideoTooLong, match="VIDEO_MAX_SECONDS=2"):
        list(sample_frames(clip, 1, max_seconds=2))
    with pytest.raises(VideoTooLong, match="VIDEO_MAX_FRAMES=5"):
        list(sample_frames(clip, 10, max_frames=5))
    assert len(list(sample_frames(clip, 1, max_seconds=3, max_frames=3))) == 3  # exactly at the caps
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(InvalidVideo):
        list(sample_frames(tmp_path / "notes.mp4", 1))
    with pytest.raises(ValueError, match="fps"):
        list(sample_frames(clip, 0))


@pytest.mark.slow
def test_video_command_writes_one_line_per_sampled_frame_and_an_annotated_mp4(tiny_checkpoint, clip, tmp_path):
    out = tmp_path / "out"
    env = {"MODEL_PATH": tiny_checkpoint, "DEVICE": "cpu", "MAX_NEW_TOKENS": "16", "MAX_PIXELS": "50176"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "video", str(clip), "the red square", "--out", str(out), "--fps", "2",
         "--annotated", "--batch-size", "4"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "done: 6 frames, 0 boxes, 0 failures" in done.stdout
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    timestamps = [line["timestamp"] for line in lines]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 6  # strictly increasing
    assert [line["frame_index"] for line in lines] == [0, 5, 10, 15, 20, 25]
    for line in lines:
        assert line["image_size"] == [160, 120]
        assert len(line["boxes"]) == len(line["labels"]) == len(line["scores"])
    with av.open(str(out / "annotated.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 6 and (decoded[0].width, decoded[0].height) == (160, 120)


def _post_video(server, path: Path, fps: str, prompt: str = "the red square") -> httpx.Response:
    with path.open("rb") as handle:
        files = {"video": (path.name, handle, "video/mp4")}
        data = {"prompt": prompt, "fps": fps}
        return httpx.post(f"{server.url}/api/ground/video", files=files, data=data, timeout=300)


@pytest.mark.slow
def test_video_endpoint_accepts_a_short_clip(server, clip):
    response = _post_video(server, clip, fps="2", prompt="the red square; the blue circle")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["phrases"] == ["the red square", "the blue circle"] and body["fps"] == 2
    assert [f["frame_index"] for f in body["frames"]] == [0, 5, 10, 15, 20, 25]
    timestamps = [f["timestamp"] for f in body["frames"]]
    assert timestamps == sorted(set(timestamps))
    assert all(f["image_size"] == [160, 120] for f in body["frames"])


@pytest.mark.slow
def test_video_endpoint_enforces_its_caps_with_413(server, clip, tmp_path):
    long_clip = make_video(tmp_path / "long.mp4", seconds=31, fps=1, image_wh=(64, 48))  # VIDEO_MAX_SECONDS = 30
    too_long = _post_video(server, long_clip, fps="1")
    assert too_long.status_code == 413
    error = too_long.json()["error"]
    assert error["code"] == "video_too_long" and "VIDEO_MAX_SECONDS=30" in error["message"]
    assert error["request_id"] == too_long.headers["X-Request-ID"]

    five_seconds = make_video(tmp_path / "five.mp4", seconds=5, fps=10, image_wh=(64, 48))
    too_many = _post_video(server, five_seconds, fps="30")  # about 150 frames > VIDEO_MAX_FRAMES = 120
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "video_too_long"
    assert "VIDEO_MAX_FRAMES=120" in too_many.json()["error"]["message"]

    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    refused = _post_video(server, not_video, fps="1")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_video"
