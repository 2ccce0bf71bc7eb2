"""Failed UI logins: a log line and a metric for each, and a pause for an address that fails too often.

Gradio's ``POST /login`` (form fields ``username``, ``password``) answers 400 "Incorrect credentials."
to a wrong user or password, and says nothing in the log. This middleware watches those answers:
each failure is logged (user name and client address, never the password) and counted in
``chord_auth_failures_total{kind="ui_login"}``; after ``MAX_FAILED_LOGINS`` failures from one address
within ``FAILED_LOGIN_WINDOW_S``, that address's next attempts get 429 ``too_many_login_attempts``
with ``Retry-After`` until the oldest failure leaves the window. A successful login is not counted.
The client address is uvicorn's: behind nginx on the same host, the ``X-Forwarded-For`` it sets.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TooManyLoginAttempts
from app.server.errors import error_response
from app.service.metrics import Metrics
from app.service.records import new_request_id

logger = logging.getLogger(__name__)

LOGIN_PATHS = ("/login", "/login/")
MAX_FAILED_LOGINS = 5
FAILED_LOGIN_WINDOW_S = 60.0
LOGIN_BODY_KEPT_BYTES = 16 * 1024  # plenty for a login form; only read again to name the user in the log
MAX_TRACKED_ADDRESSES = 10_000  # past this, addresses with no failure left in the window are forgotten
USER_NAME_LOGGED_CHARS = 64


class FailedLogins:
    """Failed logins per client address within the last ``window_s``, plus attempts still being answered
    (so a burst of parallel guesses cannot all pass before the first failure is counted)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}

    def retry_after_s(self, address: str) -> int:
        """0 when ``address`` may try again now, else the whole seconds until it may."""
        failures = self._recent(address)
        if len(failures) + self._pending.get(address, 0) < self.limit:
            return 0
        if len(failures) < self.limit:  # only attempts still being answered: they end within moments
            return 1
        return max(1, math.ceil(failures[-self.limit] + self.window_s - self.clock()))

    def begin(self, address: str) -> None:
        self._pending[address] = self._pending.get(address, 0) + 1

    def end(self, address: str, failed: bool) -> int:
        """Close an attempt begun with ``begin``; returns the failures now in the window."""
        self._pending[address] -= 1
        if not self._pending[address]:
            del self._pending[address]
        if failed:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._forget_stale()
            self._failures.setdefault(address, deque()).append(self.clock())
        return len(self._recent(address))

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= self.clock() - self.window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures

    def _forget_stale(self) -> None:
        for address in list(self._failures):
            self._recent(address)


class LoginGuard:
    """ASGI middleware around the app that serves Gradio's ``POST /login``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.failed_logins = FailedLogins(MAX_FAILED_LOGINS, FAILED_LOGIN_WINDOW_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in LOGIN_PATHS:
            return await self.app(scope, receive, send)
        address = scope["client"][0] if scope.get("client") else "-"
        request_id = new_request_id()
        wait_s = self.failed_logins.retry_after_s(address)
        if wait_s:
            return await self._refuse(scope, receive, send, address, request_id, wait_s)

        body = bytearray()
        status = 0

        async def receive_kept() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < LOGIN_BODY_KEPT_BYTES:
                body.extend(message.get("body", b"")[: LOGIN_BODY_KEPT_BYTES - len(body)])
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        self.failed_logins.begin(address)
        failed = False
        try:
            await self.app(scope, receive_kept, send_with_id)
            failed = status == 400  # Gradio's "Incorrect credentials." (or a body that did not parse)
        finally:
            failures = self.failed_logins.end(address, failed)
        if failed:
            self.metrics.auth_failures.labels("ui_login").inc()
            logger.warning(
                "failed login id=%s user=%r client=%s failures=%d/%d in %.0f s",
                request_id, await _user_name(scope, bytes(body)), address, failures, MAX_FAILED_LOGINS,
                FAILED_LOGIN_WINDOW_S,
            )  # fmt: skip

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, address: str, request_id: str, wait_s: int
    ) -> None:
        error = TooManyLoginAttempts(
            f"too many failed logins from this address; try again in {wait_s} s", retry_after_s=wait_s
        )
        self.metrics.errors.labels(error.code).inc()
        logger.warning(
            "refused login id=%s client=%s: too many failed logins; retry in %d s", request_id, address, wait_s
        )
        await error_response(error, request_id)(scope, receive, send)


async def _user_name(scope: Scope, body: bytes) -> str:
    """The ``username`` field of a login form already read (urlencoded or multipart); '-' if none."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request({**scope}, replay).form()
    except Exception:  # noqa: BLE001 - a form Gradio refused may not parse here either
        return "-"
    name = form.get("username")
    await form.close()
    return name[:USER_NAME_LOGGED_CHARS] if isinstance(name, str) else "-"
