"""Video frames in, video frames out, with PyAV (FFmpeg's libraries, shipped in the ``av`` wheel).

``sample_frames`` decodes a video and keeps about ``fps`` frames per second: the first frame at or
after each multiple of ``1/fps`` seconds (never one frame twice), with its index in the source
and its timestamp in seconds from the first frame. ``AnnotatedVideo`` encodes frames back into
an MP4 (H.264 where the wheel has libx264, else MPEG-4 Part 2).

FFmpeg only ever reads a file object Chord opened itself, with a whitelist of container demuxers
and no protocol at all: a playlist (HLS), a concat list or an image sequence that names other
files or URLs is refused, whoever sent it. What a video costs is counted decoded: the frame size
is read from the stream header before any frame is decoded, each sampled frame is scaled by
FFmpeg straight to the size it is grounded at, and the frames' pixels are counted per request.
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

from app.errors import ImageTooLarge, InvalidVideo, VideoTooLong
from app.grounding.tiling import Fit
from app.service.images import shrunk

# A duration a container reports may run a little past the last frame.
DURATION_SLACK_S = 0.5
# FFmpeg's names of the demuxers Chord accepts: MP4/MOV (and 3GP), Matroska/WebM, AVI.
CONTAINER_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
ACCEPTED_TEXT = "MP4, MOV, 3GP, MKV, WebM or AVI"
# No protocol: the demuxer may not open any other file or URL than the one it was handed.
LOCKED_DOWN = {"format_whitelist": CONTAINER_FORMATS, "protocol_whitelist": ""}


@dataclass(frozen=True)
class SampledFrame:
    frame_index: int
    timestamp: float
    image: Image.Image
    image_wh: tuple[int, int]  # the frame as the video holds it; ``image`` may be smaller


def sample_frames(
    source: str | Path | BinaryIO,
    fps: float,
    max_seconds: float | None = None,
    max_frames: int | None = None,
    max_image_pixels: int | None = None,
    fit: Fit | None = None,
    max_request_pixels: int | None = None,
) -> Iterator[SampledFrame]:
    """Frames at about ``fps`` per second; VideoTooLong past ``max_seconds`` or ``max_frames`` samples.

    ``source`` is a local file the caller trusts (opened here) or a file object. With ``max_image_pixels``
    a frame larger than that is refused (ImageTooLarge); with ``max_request_pixels`` the sampled frames
    together may hold at most that many (VideoTooLong); with ``fit`` each frame is decoded (by FFmpeg's
    scaler) no larger than it allows.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if isinstance(source, str | Path):
        with open(source, "rb") as media:
            yield from sample_frames(media, fps, max_seconds, max_frames, max_image_pixels, fit, max_request_pixels)
        return
    try:
        container = av.open(source, mode="r", container_options=LOCKED_DOWN)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InvalidVideo(f"not a video Chord can decode ({_reason(exc)}); send {ACCEPTED_TEXT}") from None
    with container:
        if not container.streams.video:
            raise InvalidVideo("the file holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        budget = _PixelBudget(fps, max_image_pixels, fit, max_request_pixels)
        budget.check_frame((stream.codec_context.width, stream.codec_context.height))
        duration = _duration_s(container, stream)
        if duration is not None:
            _check_length(duration, fps, max_seconds, max_frames, slack=DURATION_SLACK_S)
            budget.check_clip(duration, (stream.codec_context.width, stream.codec_context.height))
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
                image_wh = (frame.width, frame.height)
                target_wh = budget.take(image_wh)
                # Decoded whole, then shrunk as an uploaded image is: a frame and the same picture sent as an
                # image get the same pixels, so the same boxes. One full frame is held at a time.
                image = shrunk(frame.to_image(), target_wh)
                yield SampledFrame(index, round(offset, 3), image, image_wh)
                kept += 1
                next_time = (math.floor(offset * fps + 1e-6) + 1) / fps
        except av.FFmpegError as exc:
            raise InvalidVideo(f"the video could not be decoded ({_reason(exc)})") from None
        if kept == 0:
            raise InvalidVideo("the video holds no frame")


class _PixelBudget:
    """The pixel caps of one request: per frame as decoded, and summed over the sampled frames as grounded."""

    def __init__(self, fps: float, max_image_pixels: int | None, fit: Fit | None, total: int | None):
        self.fps = fps
        self.max_image_pixels = max_image_pixels
        self.fit = fit
        self.total = total
        self.spent = 0
        self.frames = 0

    def target_wh(self, image_wh: tuple[int, int]) -> tuple[int, int]:
        return (self.fit.wh(image_wh) if self.fit else None) or image_wh

    def check_frame(self, image_wh: tuple[int, int]) -> None:
        w, h = image_wh
        if self.max_image_pixels is not None and w * h > self.max_image_pixels:
            raise ImageTooLarge(
                f"the video's frames are {w}x{h} = {w * h / 1e6:.3g} megapixels; the limit is "
                f"{self.max_image_pixels / 1e6:.3g} megapixels (MAX_IMAGE_PIXELS)"
            )

    def check_clip(self, seconds: float, image_wh: tuple[int, int]) -> None:
        """Before decoding: the frames the duration promises, at the size they will be decoded to."""
        frames = math.floor(max(seconds - DURATION_SLACK_S, 0) * self.fps + 1e-6) + 1
        w, h = self.target_wh(image_wh)
        self._check(frames * w * h, f"at least {frames} frames of {w}x{h}")

    def take(self, image_wh: tuple[int, int]) -> tuple[int, int]:
        """The size to decode one more sampled frame to, counted against the request's budget."""
        self.check_frame(image_wh)
        w, h = self.target_wh(image_wh)
        self.spent += w * h
        self.frames += 1
        self._check(self.spent, f"at least {self.frames} frames of up to {w}x{h}")
        return w, h

    def _check(self, pixels: int, what: str) -> None:
        if self.total is not None and pixels > self.total:
            raise VideoTooLong(
                f"at fps={self.fps:g} this video gives {what} = {pixels / 1e6:.3g} megapixels to ground; one "
                f"request may ground at most {self.total / 1e6:.3g} megapixels (MAX_REQUEST_PIXELS); "
                "lower fps or send a shorter or smaller clip"
            )


def _reason(exc: Exception) -> str:
    """FFmpeg's reason without the file name it quotes (a server-side path)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


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
            if self.codec == "libx264":  # no look-ahead: frames are written as they come, not buffered by dozens
                self._stream.options = {"tune": "zerolatency"}
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
        "confidence": result["confidence"],
        "needs_review": result["needs_review"],
        "text": result["text"],
    }
