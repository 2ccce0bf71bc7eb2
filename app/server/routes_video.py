"""``POST /api/ground/video``: a short clip in, boxes for each sampled frame out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from app.errors import InvalidVideo
from app.grounding.options import GroundingOptions
from app.server.forms import frame_options
from app.server.routes_api import RecordedRoute
from app.server.schemas import PROMPT_HELP, error_responses
from app.service.clips import ground_clip
from app.service.service import GroundingService

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
    confidence: float | None = Field(description="The best box's score; null without a box.", examples=[0.91])
    needs_review: bool = Field(
        description="True without a box, or when the confidence is under REVIEW_THRESHOLD.", examples=[False]
    )
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
