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
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ChordError
from app.server.asgi_errors import send_error
from app.server.request_body import read_body, replay
from app.uploads import PayloadTooLarge

logger = logging.getLogger(__name__)

GRADIO_PREFIX = "/gradio_api/"
# Multipart uploads (streamed to disk by Gradio under its own size cap) carry no client path.
UNGUARDED = ("/gradio_api/upload",)
# A Gradio event's JSON holds phrases, numbers and file references: small.
MAX_EVENT_JSON_BYTES = 1_000_000


class ForbiddenPath(ChordError):
    status = 403
    code = "forbidden_path"


def upload_folder() -> Path:
    """Gradio's upload cache, as Gradio itself computes it (``GRADIO_TEMP_DIR`` or the temp dir's ``gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


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


def check_cached_file(path: object, folder: Path) -> Path:
    """The resolved path when ``path`` names a regular file inside ``folder``; ForbiddenPath otherwise.

    Blocking (``realpath`` and ``stat``): call it off the event loop.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ForbiddenPath("a file reference must be a path Gradio's upload returned")
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(folder) or resolved == folder:
        raise ForbiddenPath("only files uploaded to this server can be used: upload the file first")
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        raise ForbiddenPath("the uploaded file is gone: upload it again") from None
    if not stat.S_ISREG(mode):
        raise ForbiddenPath("only files uploaded to this server can be used: upload the file first")
    return resolved


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


async def read_cached_upload(path: str, limit: int) -> bytes:
    """The bytes of a file Gradio's upload put in its cache (checked again here); 413 past ``limit``."""
    resolved = await anyio.to_thread.run_sync(check_cached_file, path, upload_folder())

    def read() -> bytes:
        with open(resolved, "rb") as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit / 1e6:.1f} MB (MAX_UPLOAD_BYTES)")
        return data

    return await anyio.to_thread.run_sync(read)
