"""``POST /api/ground/video``: a short clip in, boxes for each sampled frame out."""

from __future__ import annotations

import io

import anyio
from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from app.batch.video import frame_record, sample_frames
from app.errors import InvalidVideo
from app.options import GroundingOptions
from app.server.routes_api import RecordedRoute
from app.server.schemas import MAX_NEW_TOKENS_HELP, PROMPT_HELP, SCORE_THRESHOLD_HELP, error_responses
from app.server.service import GroundingService

VIDEO_ERRORS = error_responses(
    "invalid_video",
    "video_too_long",
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
    video: UploadFile = File(..., description="A short video (MP4, MOV, WebM, MKV, ...), at most VIDEO_MAX_SECONDS."),
    prompt: str = Form(..., description=PROMPT_HELP, examples=["the forklift"]),
    fps: float = Form(1.0, gt=0, le=30, description="Frames to sample per second of video.", examples=[1.0]),
    max_new_tokens: int | None = Form(None, ge=1, le=2048, description=MAX_NEW_TOKENS_HELP, examples=[256]),
    score_threshold: float = Form(0.0, ge=0.0, le=1.0, description=SCORE_THRESHOLD_HELP, examples=[0.3]),
) -> dict:
    """Sample a short video at ``fps`` frames per second and find the prompt's objects in each frame.

    Longer than VIDEO_MAX_SECONDS, or more than VIDEO_MAX_FRAMES sampled frames, is refused with 413.
    """
    phrases = request.app.state.service.phrases(prompt, request.state.record)
    data = await video.read()
    if not data:
        raise InvalidVideo("the video is empty: send the video file's bytes as the 'video' field")
    service: GroundingService = request.app.state.service
    frames = await ground_clip(service, data, phrases, fps, max_new_tokens, score_threshold)
    request.state.record.boxes = sum(len(f.get("boxes", [])) for f in frames)
    return {"phrases": list(phrases), "fps": fps, "frames": frames}


async def ground_clip(
    service: GroundingService,
    source: bytes | str,
    phrases: tuple[str, ...],
    fps: float,
    max_new_tokens: int | None = None,
    score_threshold: float = 0.0,
    keep_images: list | None = None,
) -> list[dict]:
    """Frame records of a clip (within the server's caps); the first frame that fails fails the request.

    With ``keep_images`` (a list), the sampled frames' images are appended to it, in order.
    """
    settings = service.settings

    def sample() -> list:
        media = io.BytesIO(source) if isinstance(source, bytes) else source
        return list(sample_frames(media, fps, settings.video_max_seconds, settings.video_max_frames))

    frames = await anyio.to_thread.run_sync(sample)
    options = GroundingOptions(max_new_tokens, score_threshold)
    outcomes = await service.ground_many([f.image for f in frames], phrases, options)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    if keep_images is not None:
        keep_images.extend(f.image for f in frames)
    return [frame_record(frame, outcome.to_dict()) for frame, outcome in zip(frames, outcomes, strict=True)]
