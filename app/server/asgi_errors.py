"""The one error shape, sent from ASGI middleware (before or instead of any route)."""

from __future__ import annotations

from starlette.types import Scope, Send

from app.errors import ChordError
from app.server.errors import error_response
from app.service.records import new_request_id


async def send_error(error: ChordError, scope: Scope, send: Send, request_id: str | None = None) -> None:
    """Answer ``{"error": {"code", "message", "request_id"}}`` with ``X-Request-ID``."""
    await error_response(error, request_id or new_request_id())(scope, _no_body, send)


async def _no_body() -> dict:  # pragma: no cover - an error answer never reads the request
    return {"type": "http.disconnect"}
