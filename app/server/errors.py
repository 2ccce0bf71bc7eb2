"""The one error shape of the HTTP API: ``{"error": {"code", "message", "request_id"}}``.

Every failure, expected or not, goes through ``error_response``; an unexpected fault is a 500
whose request id is also in the log line, so a report from a user can be matched to a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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


class NotFound(ChordError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ChordError):
    """A method the path does not take; ``allowed`` becomes the ``Allow`` header."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: Iterable[str]):
        super().__init__(message)
        self.allowed = tuple(sorted(allowed))


class TooManyLoginAttempts(ChordError):
    """Too many failed UI logins from one address; ``retry_after_s`` becomes the ``Retry-After`` header."""

    status = 429
    code = "too_many_login_attempts"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


# code -> (status, when); the README's error table says the same (tests/test_error_table.py checks both ways).
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
    "not_found": (404, "no Chord route has this path under /api/"),
    "method_not_allowed": (405, "the path takes other methods; the Allow header lists them"),
    "too_many_login_attempts": (429, "POST /login: too many failed UI logins from this address; see Retry-After"),
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
        return _from_http_exception(exc)
    return InternalError("unexpected server error; quote the request id when reporting it")


def error_body(exc: Exception, request_id: str) -> dict:
    """``{"error": {"code", "message", "request_id"}}`` for a failure."""
    body = as_chord_error(exc).to_dict()
    body["error"]["request_id"] = request_id
    return body


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    error = as_chord_error(exc)
    body = error_body(error, request_id)
    headers = {"X-Request-ID": request_id}
    if isinstance(error, QueueFull | TooManyLoginAttempts):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    return JSONResponse(body, status_code=error.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """For failures raised outside Chord's own routes' handlers (those log and shape their own)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", "-"))

    for kind in (ChordError, RequestValidationError, HTTPException):
        app.add_exception_handler(kind, handle)


def _from_http_exception(exc: HTTPException) -> ChordError:
    """Starlette's and FastAPI's own refusals; any other than 404 and 405 is a body they could not read
    (a multipart form past its limits of files, fields or part size, or a body that does not parse)."""
    if exc.status_code == 404:
        return NotFound(str(exc.detail))
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(str(exc.detail), [m.strip() for m in allowed.split(",") if m.strip()])
    return InvalidRequest(str(exc.detail))


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
