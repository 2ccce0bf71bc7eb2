"""Gradio's upload cache: the only place a file named in a UI or Gradio API call may come from."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio

from app.errors import ForbiddenPath, PayloadTooLarge


def upload_folder() -> Path:
    """Gradio's upload cache, as Gradio itself computes it (``GRADIO_TEMP_DIR`` or the temp dir's ``gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


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
