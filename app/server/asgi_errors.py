"""The one error shape, sent from ASGI middleware (before or instead of any route)."""

from __future__ import annotations

from starlette.types import Scope, Send

from app.errors import ChordError
from app.server.records import new_request_id


async def send_error(error: ChordError, scope: Scope, send: Send, request_id: str | None = None) -> None:
    """Answer ``{"error": {"code", "message", "request_id"}}`` with ``X-Request-ID``."""
    from fastapi.responses import JSONResponse

    request_id = request_id or new_request_id()
    body = error.to_dict()
    body["error"]["request_id"] = request_id
    response = JSONResponse(body, status_code=error.status, headers={"X-Request-ID": request_id})
    await response(scope, _no_body, send)


async def _no_body() -> dict:  # pragma: no cover - a JSONResponse never reads the request
    return {"type": "http.disconnect"}
