"""The grounding service in this process, for the command line: loaded at once, called from plain code.

The command line builds the same ``GroundingService`` the server runs, from the same settings
(``ENGINE=openai`` included), so a file grounded here gets the answer the REST API gives for it. The
service is asynchronous; here it runs on an event loop of its own, in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import TypeVar

from app.model_path import require_model_path
from app.service.service import GroundingService
from app.settings import Settings

T = TypeVar("T")
# Local files the operator names are not uploads: no byte cap, no cap on a chunk's pixels together
# (MAX_IMAGE_PIXELS still holds for each image, and the decode budget still paces them).
UNCAPPED = {"max_upload_bytes": 1 << 40, "max_request_pixels": 1 << 40}


class InProcessService:
    """``with InProcessService(settings) as chord: chord.run(chord.service.ground_upload(...))``."""

    def __init__(self, settings: Settings) -> None:
        if settings.engine == "transformers":  # a missing checkpoint is said in a second, before torch loads
            require_model_path(settings.resolved_model_path())
        tool_settings = settings.model_copy(update=UNCAPPED)
        self.service = GroundingService(tool_settings)
        self.service.load()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chord-cli-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[object, object, T]) -> T:
        """The coroutine's result, run on the service's loop (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        self.service.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> InProcessService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
