"""Two ways to ground a chunk of images: in this process through the batching scheduler, or on a server.

Both return one result dict (``GroundingResult.to_dict()`` shape) or one ``{"error": {...}}`` per
image, in order. A failure of the service itself (queue full, timeout, server unreachable or
still loading) is retried a few times and then raised as ``ServiceUnavailable``: those images
are not recorded, so a re-run grounds them.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from PIL import Image

from app.engine.base import Engine, GroundingRequest
from app.errors import ChordError, ServiceUnavailable
from app.service.scheduler import BatchScheduler

logger = logging.getLogger(__name__)

# Error codes that say "the service could not answer now", not "this image failed".
TRANSIENT_CODES = frozenset({"busy", "timeout", "shutting_down", "model_loading"})
RETRIES = 6


class SchedulerGrounder:
    """In-process: every image of a chunk is submitted at once, so the scheduler batches them."""

    def __init__(self, engine: Engine, batch_size: int, max_batch_wait_ms: float, request_timeout_s: float):
        self.scheduler = BatchScheduler(
            engine,
            max_batch_size=batch_size,
            max_batch_wait_ms=max_batch_wait_ms,
            max_queue=max(64, 2 * batch_size),
            request_timeout_s=request_timeout_s,
        )

    def ground(
        self, phrases: tuple[str, ...], items: Sequence[tuple[Path, Image.Image]], max_new_tokens: int | None = None
    ) -> list[dict]:
        futures = [self.scheduler.submit(GroundingRequest(image, phrases, max_new_tokens)) for _, image in items]
        return [_outcome(future) for future in futures]

    def close(self) -> None:
        self.scheduler.stop(timeout_s=5)


def _outcome(future: Future) -> dict:
    try:
        return future.result().to_dict()
    except ChordError as exc:
        if exc.code in TRANSIENT_CODES:
            raise ServiceUnavailable(f"the model could not answer: {exc.message}") from exc
        return exc.to_dict()
    except Exception as exc:  # noqa: BLE001 - a model fault on one image is that image's failure
        return {"error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}


class ServerGrounder:
    """Against a running Chord server: one ``POST /api/ground/batch`` per chunk, the files sent as they are."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        import httpx

        self.url = url.rstrip("/") + "/api/ground/batch"
        self._client = httpx.Client(timeout=timeout_s)
        self._transport_error = httpx.TransportError

    def ground(
        self, phrases: tuple[str, ...], items: Sequence[tuple[Path, Image.Image]], max_new_tokens: int | None = None
    ) -> list[dict]:
        results: list[dict | None] = [None] * len(items)
        pending = list(range(len(items)))
        for attempt in range(RETRIES):
            answered, wait_s = self._post(phrases, [items[i][0] for i in pending], max_new_tokens)
            still = []
            for index, result in zip(pending, answered or [None] * len(pending), strict=True):
                code = (result or {}).get("error", {}).get("code") if result else "unreachable"
                if result is None or code in TRANSIENT_CODES:
                    still.append(index)
                else:
                    results[index] = result
            pending = still
            if not pending:
                return results  # type: ignore[return-value]
            delay = wait_s or min(2**attempt, 30)
            logger.warning("%d images not answered (attempt %d); retrying in %g s", len(pending), attempt + 1, delay)
            time.sleep(delay)
        raise ServiceUnavailable(f"{self.url} did not answer {len(pending)} images after {RETRIES} attempts")

    def _post(
        self, phrases: tuple[str, ...], paths: list[Path], max_new_tokens: int | None
    ) -> tuple[list[dict] | None, float | None]:
        files = [("images", (p.name, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "image/png")) for p in paths]
        data: dict = {"prompt": "\n".join(phrases)}
        if max_new_tokens is not None:
            data["max_new_tokens"] = str(max_new_tokens)
        try:
            response = self._client.post(self.url, files=files, data=data)
        except self._transport_error as exc:
            logger.warning("%s: %s", self.url, exc)
            return None, None
        if response.status_code in (503, 504):
            return None, float(response.headers.get("Retry-After", 0)) or None
        if response.status_code != 200:
            raise ChordError(f"{self.url} answered {response.status_code}: {response.text[:300]}")
        return response.json()["results"], None

    def close(self) -> None:
        self._client.close()
