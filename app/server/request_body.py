"""Request bodies counted while they arrive: a body over its cap is refused before it is read whole.

``BodyLimit`` is ASGI middleware for the whole app (REST and Gradio alike): a ``Content-Length``
over the cap gets 413 at once; a body sent without one (chunked) is counted chunk by chunk and
refused the moment it passes the cap. What the route had started to answer is replaced by the 413.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge
from app.server.asgi_errors import send_error

BODY_METHODS = ("POST", "PUT", "PATCH")


def too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than {limit / 1e6:g} MB; send less")


async def read_body(receive: Receive, limit: int, what: str) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over ``body`` once, then waits on the real one (for the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class BodyLimit:
    """Caps every request body at ``limit_for(path)`` bytes while it streams in."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await send_error(too_large("the request body", limit), scope, send)
        received = 0
        refused = False
        started = False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise too_large("the request body", limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await send_error(too_large("the request body", limit), scope, send, _request_id(message))
                return  # what the app answered after the refusal is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not refused or started:
                raise
            await send_error(too_large("the request body", limit), scope, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _request_id(start: Message) -> str | None:
    for name, value in start.get("headers", []):
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    return None
