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

from app.errors import (
    ChordError,
    EmptyPrompt,
    InvalidRequest,
    MethodNotAllowed,
    MissingImage,
    NotFound,
    Retryable,
    chord_error_of,
)

logger = logging.getLogger(__name__)


def as_chord_error(exc: Exception) -> ChordError:
    """The ChordError a failure is reported as (FastAPI's and Starlette's own refusals included);
    anything unexpected becomes ``internal_error``."""
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    return chord_error_of(exc)


def error_body(exc: Exception, request_id: str) -> dict:
    """``{"error": {"code", "message", "request_id"}}`` for a failure."""
    return as_chord_error(exc).to_dict(request_id)


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    error = as_chord_error(exc)
    body = error_body(error, request_id)
    headers = {"X-Request-ID": request_id}
    if isinstance(error, Retryable):
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
