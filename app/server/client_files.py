"""No client-named path is ever opened: Gradio inputs may only name files in its own upload cache.

A Gradio event carries files as ``FileData`` objects whose ``path`` the client writes. Gradio checks
such paths only once ``blocks.has_launched`` is true, which ``mount_gradio_app`` never sets, and even
then it reads (hashes and copies) the file on the event loop. So every JSON body posted to Gradio's
API is read here first, and each ``path`` in it must be, once symbolic links and ``..`` are
resolved, a regular file inside the upload cache (``GRADIO_TEMP_DIR``): no ``/proc``, ``/dev`` or
FIFO, no server file, no URL for the server to fetch. Anything else is refused with 403
``forbidden_path`` before Gradio sees the request. The checks are ``stat`` calls, run off the event
loop; no file is opened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ForbiddenPath, PayloadTooLarge
from app.server.asgi_errors import send_error
from app.server.request_body import read_body, replay
from app.ui.upload_cache import check_cached_file, upload_folder

logger = logging.getLogger(__name__)

GRADIO_PREFIX = "/gradio_api/"
# Multipart uploads (streamed to disk by Gradio under its own size cap) carry no client path.
UNGUARDED = ("/gradio_api/upload",)
# A Gradio event's JSON holds phrases, numbers and file references: small.
MAX_EVENT_JSON_BYTES = 1_000_000


def client_paths(value: object) -> Iterator[object]:
    """Every ``path`` value of every object in a decoded JSON document (FileData and look-alikes)."""
    if isinstance(value, dict):
        if "path" in value:
            yield value["path"]
        for item in value.values():
            yield from client_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from client_paths(item)


def check_event_body(body: bytes, folder: Path) -> None:
    """ForbiddenPath when a JSON event body names any file outside the upload cache."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return  # not JSON: Gradio refuses it itself, and it names no file
    for path in client_paths(document):
        check_cached_file(path, folder)


class ClientFileGuard:
    """ASGI middleware in front of the mounted Gradio app: checks every file a client names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(GRADIO_PREFIX)
            or path.startswith(UNGUARDED)
        ):
            return await self.app(scope, receive, send)
        try:
            body = await read_body(receive, MAX_EVENT_JSON_BYTES, "a Gradio API call")
            await anyio.to_thread.run_sync(check_event_body, body, upload_folder())
        except (ForbiddenPath, PayloadTooLarge) as error:
            client = (scope.get("client") or ("-",))[0]
            logger.warning("refused %s from %s: %s", path, client, error.message)
            return await send_error(error, scope, send)
        await self.app(scope, replay(body, receive), send)
