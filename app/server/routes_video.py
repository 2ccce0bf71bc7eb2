"""``POST /api/ground/video``: a short clip in, boxes for each sampled frame out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import BinaryIO

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from app.batch.video import SampledFrame, frame_record, sample_frames
from app.errors import InvalidVideo
from app.options import GroundingOptions
from app.server.forms import frame_options
from app.server.routes_api import RecordedRoute
from app.server.schemas import PROMPT_HELP, error_responses
from app.server.service import GroundingService
from app.tiling import rescale_result

VIDEO_ERRORS = error_responses(
    "invalid_video",
    "video_too_long",
    "image_too_large",
    "empty_prompt",
    "invalid_request",
    "model_loading",
    "busy",
    "timeout",
    "internal_error",
)


class VideoFrame(BaseModel):
    frame_index: int = Field(description="Index of the frame in the decoded video, from 0.", examples=[25])
    timestamp: float = Field(description="Seconds from the video's first frame.", examples=[1.0])
    image_size: list[int] = Field(description="[width, height] of the frame.", examples=[[1280, 720]])
    boxes: list[list[int]] = Field(description="[x1, y1, x2, y2] pixels of the frame.", examples=[[[40, 60, 300, 420]]])
    labels: list[str] = Field(description="labels[i] names boxes[i].", examples=[["the forklift"]])
    scores: list[float | None] = Field(description="scores[i] is the confidence of boxes[i].", examples=[[0.91]])
    text: str = Field(description="The model's raw answer for this frame.")


class VideoResponse(BaseModel):
    """One entry per sampled frame, in time order."""

    phrases: list[str] = Field(description="The phrases asked about.", examples=[["the forklift"]])
    fps: float = Field(description="Frames sampled per second of video.", examples=[1.0])
    frames: list[VideoFrame] = Field(description="The sampled frames and what was found in each.")


router = APIRouter(prefix="/api", tags=["grounding"], route_class=RecordedRoute)


@router.post("/ground/video", response_model=VideoResponse, responses=VIDEO_ERRORS)
async def ground_video(
    request: Request,
    video: UploadFile = File(
        ..., description="A short video (MP4, MOV, 3GP, MKV, WebM, AVI), at most VIDEO_MAX_SECONDS."
    ),
    prompt: str = Form(..., description=PROMPT_HELP, examples=["the forklift"]),
    fps: float = Form(1.0, gt=0, le=30, description="Frames to sample per second of video.", examples=[1.0]),
    options: GroundingOptions = Depends(frame_options),
) -> dict:
    """Sample a short video at ``fps`` frames per second and find the prompt's objects in each frame.

    Longer than VIDEO_MAX_SECONDS, more than VIDEO_MAX_FRAMES sampled frames, frames over MAX_IMAGE_PIXELS, or
    sampled frames holding more than MAX_REQUEST_PIXELS pixels in all, is refused with 413.
    """
    phrases = request.app.state.service.phrases(prompt, request.state.record)
    if not video.size:
        raise InvalidVideo("the video is empty: send the video file's bytes as the 'video' field")
    service: GroundingService = request.app.state.service
    frames = await ground_clip(service, video.file, phrases, fps, options)
    request.state.record.boxes = sum(len(f.get("boxes", [])) for f in frames)
    return {"phrases": list(phrases), "fps": fps, "frames": frames}


# Decoded pixels held at once: about 150 MB of RGB frames (and what the processor makes of them); at least a frame.
CHUNK_PIXELS = 48_000_000

# A chunk of frames, with each frame's answer in pixels of the frame's (possibly smaller) image.
ChunkHandler = Callable[[list[tuple[SampledFrame, dict]]], None]


async def ground_clip(
    service: GroundingService,
    media: BinaryIO,
    phrases: tuple[str, ...],
    fps: float,
    options: GroundingOptions,
    on_chunk: ChunkHandler | None = None,
) -> list[dict]:
    """Frame records of a clip (within the server's caps); the first frame that fails fails the request.

    Frames are decoded, grounded and let go a chunk at a time: at most MAX_BATCH_SIZE frames, and no more
    decoded pixels than CHUNK_PIXELS unless a single frame is that large. ``on_chunk`` (run
    off the event loop) sees each chunk's frames before they are let go. Boxes come back in pixels of the
    frames as the video holds them.
    """
    settings = service.settings
    caps = (settings.video_max_seconds, settings.video_max_frames, settings.max_image_pixels, service.fit,
            settings.max_request_pixels)  # fmt: skip
    frames = sample_frames(media, fps, *caps)
    take = functools.partial(_next_chunk, frames, settings.max_batch_size, CHUNK_PIXELS)
    records: list[dict] = []
    try:
        while True:
            grounded = await _ground_chunk(service, take, phrases, options, on_chunk)
            if grounded is None:
                break
            records += grounded
    finally:
        await anyio.to_thread.run_sync(frames.close)
    return records


async def _ground_chunk(service, take, phrases, options, on_chunk) -> list[dict] | None:
    """The next chunk's frame records (None when no frame is left); its images are let go on return."""
    chunk = await anyio.to_thread.run_sync(take)
    if not chunk:
        return None
    outcomes = await service.ground_many([f.image for f in chunk], phrases, options)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    if on_chunk is not None:
        await anyio.to_thread.run_sync(on_chunk, [(f, o.to_dict()) for f, o in zip(chunk, outcomes, strict=True)])
    return [
        frame_record(frame, rescale_result(outcome, frame.image_wh).to_dict())
        for frame, outcome in zip(chunk, outcomes, strict=True)
    ]


def _next_chunk(frames: Iterator[SampledFrame], max_frames: int, max_pixels: int) -> list[SampledFrame]:
    """Up to ``max_frames`` frames holding at most ``max_pixels`` pixels (always one, if any is left)."""
    chunk: list[SampledFrame] = []
    pixels = 0
    for frame in frames:
        chunk.append(frame)
        pixels += frame.image.width * frame.image.height
        if len(chunk) == max_frames or pixels + pixels // len(chunk) > max_pixels:
            break
    return chunk
