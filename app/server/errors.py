"""The one error shape of the HTTP API: ``{"error": {"code", "message", "request_id"}}``.

Every failure, expected or not, goes through ``error_response``; an unexpected fault is a 500
whose request id is also in the log line, so a report from a user can be matched to a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import ChordError, InvalidRequest
from app.scheduler import QueueFull

logger = logging.getLogger(__name__)


class MissingImage(InvalidRequest):
    code = "missing_image"


class EmptyPrompt(InvalidRequest):
    code = "empty_prompt"


class InternalError(ChordError):
    status = 500
    code = "internal_error"


# Documented in /docs and docs/server-notes.md: status -> (code, when).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_image": (400, "the file or base64 data is not an image Pillow can decode"),
    "missing_image": (422, "the request carries no image field"),
    "empty_prompt": (422, "the prompt holds no phrase once split on ';' and newlines"),
    "invalid_request": (422, "another field is missing or out of range, or the body is not valid JSON"),
    "invalid_video": (400, "the video file is not a video FFmpeg can decode"),
    "video_too_long": (413, "the video is longer than VIDEO_MAX_SECONDS, or gives more than VIDEO_MAX_FRAMES frames"),
    "model_loading": (503, "the model is still loading; retry when GET /health answers 200"),
    "model_load_failed": (503, "the model could not be loaded; GET /health says why"),
    "unsupported_media_type": (415, "the upload is not one of the accepted image formats; the message lists them"),
    "payload_too_large": (413, "the upload is larger than MAX_UPLOAD_BYTES"),
    "image_too_large": (413, "the image has more pixels than MAX_IMAGE_PIXELS (checked before decoding)"),
    "prompt_too_long": (422, "the prompt is longer than MAX_PROMPT_CHARS"),
    "unauthorized": (401, "API_KEY is set and the request carries no valid key"),
    "out_of_memory": (503, "the GPU ran out of memory on this request; retry, or lower MAX_BATCH_SIZE / MAX_PIXELS"),
    "busy": (503, "the queue is full; retry after the Retry-After header's seconds"),
    "timeout": (504, "no answer within REQUEST_TIMEOUT_S"),
    "shutting_down": (503, "the server is stopping; retry on another replica or in a moment"),
    "engine_unavailable": (502, "ENGINE=openai: the engine server could not be reached or failed (5xx)"),
    "engine_rejected": (502, "ENGINE=openai: the engine refused the request (4xx); its message is included"),
    "engine_timeout": (504, "ENGINE=openai: the engine gave no answer within ENGINE_TIMEOUT_S"),
    "model_process_exited": (503, "the model's own process ended (e.g. killed for memory); the server restarts"),
    "internal_error": (500, "an unexpected fault; the request id is in the server log"),
}


def as_chord_error(exc: Exception) -> ChordError:
    """The ChordError a failure is reported as; anything unexpected becomes ``internal_error``."""
    if isinstance(exc, ChordError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        error = InvalidRequest(str(exc.detail))
        error.status = exc.status_code
        return error
    return InternalError("unexpected server error; quote the request id when reporting it")


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    error = as_chord_error(exc)
    body = error.to_dict()
    body["error"]["request_id"] = request_id
    headers = {"X-Request-ID": request_id}
    if isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse(body, status_code=error.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """For failures raised outside Chord's own routes' handlers (those log and shape their own)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", "-"))

    for kind in (ChordError, RequestValidationError, HTTPException):
        app.add_exception_handler(kind, handle)


def _from_validation(exc: RequestValidationError) -> ChordError:
    problems = []
    for err in exc.errors():
        field = next((str(p) for p in reversed(err.get("loc", ())) if isinstance(p, str) and p != "body"), "body")
        if err.get("type") == "missing" and field == "image":
            return MissingImage("an image is required: send it as the 'image' field")
        if err.get("type") == "missing" and field == "prompt":
            return EmptyPrompt("a prompt is required: one or more phrases separated by ';' or newlines")
        problems.append(f"{field}: {err.get('msg', 'invalid')}")
    return InvalidRequest("; ".join(problems) or "invalid request")
