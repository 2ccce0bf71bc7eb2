"""Video frames in, video frames out, with PyAV (FFmpeg's libraries, shipped in the ``av`` wheel).

``sample_frames`` decodes a video and keeps about ``fps`` frames per second: the first frame at or
after each multiple of ``1/fps`` seconds (never one frame twice), with its index in the source
and its timestamp in seconds from the first frame. ``AnnotatedVideo`` encodes frames back into
an MP4 (H.264 where the wheel has libx264, else MPEG-4 Part 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
from PIL import Image

from app.errors import InvalidVideo, VideoTooLong

# A duration a container reports may run a little past the last frame.
DURATION_SLACK_S = 0.5


@dataclass(frozen=True)
class SampledFrame:
    frame_index: int
    timestamp: float
    image: Image.Image


def sample_frames(
    source: str | Path | BinaryIO,
    fps: float,
    max_seconds: float | None = None,
    max_frames: int | None = None,
) -> Iterator[SampledFrame]:
    """Frames at about ``fps`` per second; VideoTooLong past ``max_seconds`` or ``max_frames`` samples."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InvalidVideo(f"not a video Chord can decode: {exc}") from None
    with container:
        if not container.streams.video:
            raise InvalidVideo("the file holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration_s(container, stream)
        if duration is not None:
            _check_length(duration, fps, max_seconds, max_frames, slack=DURATION_SLACK_S)
        frame_rate = float(stream.average_rate or 25)
        first_time: float | None = None
        next_time = 0.0
        kept = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else index / frame_rate
                first_time = time if first_time is None else first_time
                offset = time - first_time
                _check_length(offset, fps, max_seconds, max_frames)
                if offset + 1e-6 < next_time:
                    continue
                yield SampledFrame(index, round(offset, 3), frame.to_image())
                kept += 1
                next_time = (math.floor(offset * fps + 1e-6) + 1) / fps
        except av.FFmpegError as exc:
            raise InvalidVideo(f"the video could not be decoded: {exc}") from None
        if kept == 0:
            raise InvalidVideo("the video holds no frame")


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_length(seconds: float, fps: float, max_seconds: float | None, max_frames: int | None, slack=0.0) -> None:
    if max_seconds is not None and seconds > max_seconds + slack:
        raise VideoTooLong(f"the video is longer than VIDEO_MAX_SECONDS={max_seconds:g} s; send a shorter clip")
    frames = math.floor(max(seconds - slack, 0) * fps + 1e-6) + 1
    if max_frames is not None and frames > max_frames:
        raise VideoTooLong(
            f"at fps={fps:g} this video gives more than VIDEO_MAX_FRAMES={max_frames} frames; "
            "lower fps or send a shorter clip"
        )


class AnnotatedVideo:
    """Writes PIL images as an MP4 at ``fps`` frames per second (size from the first frame)."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rate = Fraction(fps).limit_denominator(1000)
        self._container = av.open(str(self.path), mode="w")
        self._stream = None
        self._count = 0

    @property
    def codec(self) -> str:
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"

    def add(self, image: Image.Image) -> None:
        if self._stream is None:
            width, height = image.size[0] // 2 * 2, image.size[1] // 2 * 2  # yuv420p needs even sizes
            self._stream = self._container.add_stream(self.codec, rate=self._rate)
            self._stream.width, self._stream.height = max(width, 2), max(height, 2)
            self._stream.pix_fmt = "yuv420p"
        size = (self._stream.width, self._stream.height)
        if image.size != size:  # an odd edge loses its last pixel row or column
            image = image.resize(size) if image.width < size[0] or image.height < size[1] else image.crop((0, 0, *size))
        frame = av.VideoFrame.from_image(image.convert("RGB"))
        frame.pts = self._count
        frame.time_base = 1 / self._rate
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> AnnotatedVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_record(frame: SampledFrame, result: dict) -> dict:
    """One frames.jsonl line (or one frame of the REST answer) from a result or error dict."""
    record = {"frame_index": frame.frame_index, "timestamp": frame.timestamp}
    if "error" in result:
        return {**record, "error": result["error"]}
    return {
        **record,
        "image_size": result["image_size"],
        "boxes": result["boxes"],
        "labels": result["labels"],
        "scores": result["scores"],
        "text": result["text"],
    }
