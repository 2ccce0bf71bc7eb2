"""Who may call: an optional API key for REST and the Gradio API, optional logins for the UI.

With API_KEY set, ``/api/*`` needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (401
``unauthorized`` otherwise). The Gradio side (the page and its API) is guarded by Gradio's own
login; a request with the key in a header is let through it as the user ``api``, so programs
use the same header everywhere. ``/health`` and ``/metrics`` stay open for the watchdog and
Prometheus: bind them to loopback or guard them at the proxy.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized
from app.server.errors import error_response
from app.service.records import new_request_id
from app.settings import Settings

logger = logging.getLogger(__name__)

API_USER = "api"
OPEN_PATHS = ("/health", "/metrics")
REFUSED_ENDPOINT = "/api/*"  # the endpoint label of 401s: they are refused before routing


def ui_logins(settings: Settings) -> list[tuple[str, str]] | None:
    """Gradio ``auth`` pairs from UI_AUTH, plus ``api`` / API_KEY; None when neither is set."""
    logins = []
    for pair in filter(None, (p.strip() for p in settings.ui_auth.split(","))):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ValueError("UI_AUTH must be 'user:password' pairs separated by commas")
        logins.append((user, password))
    if settings.api_key:
        logins.append((API_USER, settings.api_key))
    return logins or None


def key_in_headers(headers: dict[str, str], key: str) -> bool:
    given = headers.get("x-api-key", "")
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        given = given or authorization[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def key_headers_sent(headers: dict[str, str]) -> str:
    """Which key headers a request carried (never their values), for the log line of a refusal."""
    sent = []
    if "x-api-key" in headers:
        sent.append("X-API-Key")
    if "authorization" in headers:
        bearer = headers["authorization"].lower().startswith("bearer ")
        sent.append("Authorization: Bearer" if bearer else "Authorization (not Bearer)")
    return ", ".join(sent) or "none"


def warn_if_exposed(settings: Settings) -> None:
    if settings.api_key or _is_loopback(settings.host):
        return
    logger.warning(
        "binding %s, reachable from other machines, with no API_KEY: anyone who can reach port %d can "
        "use the model. Set API_KEY (and UI_AUTH), or bind 127.0.0.1 behind a proxy with auth.",
        settings.host, settings.port,
    )  # fmt: skip


class ApiKeyMiddleware:
    """Enforces API_KEY on REST; turns the key into a Gradio session for the Gradio API."""

    def __init__(self, app: ASGIApp, key: str, gradio_app=None):
        self.app = app
        self.key = key
        self.gradio_app = gradio_app
        self._gradio_token = secrets.token_urlsafe(32)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"].startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        has_key = key_in_headers(headers, self.key)
        if scope["path"].startswith("/api/"):
            if not has_key:
                return await _unauthorized(scope, send, key_headers_sent(headers))
        elif has_key and self.gradio_app is not None:
            scope = self._with_gradio_session(scope)
        return await self.app(scope, receive, send)

    def _with_gradio_session(self, scope: Scope) -> Scope:
        """The key counts as Gradio's login: add a session cookie for the ``api`` user."""
        self.gradio_app.tokens[self._gradio_token] = API_USER
        cookie = f"access-token-{self.gradio_app.cookie_id}={self._gradio_token}"
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"cookie"]
        existing = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"cookie"), "")
        headers.append((b"cookie", (f"{existing}; {cookie}" if existing else cookie).encode("latin-1")))
        return {**scope, "headers": headers}


async def _unauthorized(scope: Scope, send: Send, headers_sent: str) -> None:
    """401 in the one error shape; one log line (no key) and the metrics, as for any other request."""
    started = time.perf_counter()
    request_id = new_request_id()
    error = Unauthorized("an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    response = error_response(error, request_id)
    response.headers["WWW-Authenticate"] = "Bearer"
    client = scope["client"][0] if scope.get("client") else "-"
    logger.warning(
        "refused request id=%s path=%r client=%s key_headers=%s: no valid API key",
        request_id, scope["path"], client, headers_sent,
    )  # fmt: skip
    metrics = scope["app"].state.service.metrics
    metrics.auth_failures.labels("api_key").inc()
    metrics.observe(REFUSED_ENDPOINT, error.status, time.perf_counter() - started, error.code)
    await response(scope, _noop_receive, send)


async def _noop_receive():  # pragma: no cover - a 401 reads no body
    return {"type": "http.disconnect"}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
