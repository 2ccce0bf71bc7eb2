"""Videos: frames sampled with PyAV, ``python -m app video``, and ``POST /api/ground/video`` with its caps."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image, ImageDraw

from app.errors import ImageTooLarge, InvalidVideo, VideoTooLong
from app.grounding.tiling import Fit
from app.service.frames import AnnotatedVideo, sample_frames

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


def secret_and_playlists(folder: Path, clip: Path) -> tuple[str, dict[str, Path]]:
    """A secret (a token in a text file, and a clip FFmpeg would decode) and files that point FFmpeg at them."""
    token = "CHORD-SECRET-7f3a9c"
    secret = folder / "secret.txt"
    secret.write_text(f"{token}\n")
    segment = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3,\nfile://{}\n#EXT-X-ENDLIST\n"
    files = {
        "clip.m3u8": segment.format(clip),  # a playlist whose segment is a server-side video
        "text.m3u8": segment.format(secret),  # ... or any server-side file
        "list.ffconcat": f"ffconcat version 1.0\nfile '{clip}'\n",  # the concat demuxer
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return token, {name: folder / name for name in files}


def test_playlists_and_lists_naming_other_files_are_refused(clip, tmp_path):
    token, pointers = secret_and_playlists(tmp_path, clip)
    for name, path in pointers.items():
        for source in (path, io.BytesIO(path.read_bytes())):  # a path we open ourselves (UI, CLI), bytes (REST)
            with pytest.raises(InvalidVideo) as refused:
                list(sample_frames(source, 1))
            assert token not in refused.value.message and str(tmp_path) not in refused.value.message, name


def test_frames_are_decoded_small_and_keep_their_size(clip):
    frames = list(sample_frames(clip, 1, fit=Fit(80)))
    assert [f.image.size for f in frames] == [(80, 60)] * 3  # scaled by FFmpeg, aspect kept
    assert [f.image_wh for f in frames] == [(160, 120)] * 3  # the frame as the video holds it


@pytest.mark.parametrize(
    ("fps", "max_image_pixels", "max_side", "error", "words"),
    [
        (1, 160 * 120 - 1, None, ImageTooLarge, "160x120 = 0.0192 megapixels"),  # a frame over MAX_IMAGE_PIXELS
        (2, 160 * 120, None, VideoTooLong, "at least 6 frames of 160x120"),  # 6 frames > MAX_REQUEST_PIXELS
        (10, 160 * 120, 80, VideoTooLong, "26 frames of 80x60"),  # counted at the decoded size
        (1, 160 * 120, None, None, ""),  # 3 frames: within the budget
        (2, 160 * 120, 80, None, ""),  # 6 frames of 80x60: within the budget
    ],
)
def test_pixel_caps_are_checked_before_decoding(clip, fps, max_image_pixels, max_side, error, words):
    fit = Fit(max_side) if max_side else None
    caps = {"max_image_pixels": max_image_pixels, "fit": fit, "max_request_pixels": 4 * 160 * 120}
    if error is None:
        assert list(sample_frames(clip, fps, **caps))
        return
    frames = sample_frames(clip, fps, **caps)
    limit = "MAX_IMAGE_PIXELS" if error is ImageTooLarge else "MAX_REQUEST_PIXELS"
    with pytest.raises(error, match=limit) as refused:
        next(frames)  # refused before the first frame is decoded
    assert words in refused.value.message


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
        assert line["needs_review"] is (line["confidence"] is None or line["confidence"] < 0.7)
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


@pytest.mark.slow
def test_video_endpoint_refuses_playlists_without_reading_what_they_name(server, clip, tmp_path):
    token, pointers = secret_and_playlists(tmp_path, clip)
    for name, path in pointers.items():
        refused = _post_video(server, path, fps="1")
        assert refused.status_code == 400, (name, refused.text)
        assert refused.json()["error"]["code"] == "invalid_video"
        assert token not in refused.text and str(tmp_path) not in refused.text
