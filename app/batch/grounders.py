"""Two ways to ground a chunk of image files: in this process through the grounding service, or on a server.

Both return one result dict (``GroundingResult.to_dict()`` shape) or one ``{"error": {...}}`` per
file, in order, and both ground exactly as the REST API does (the same decoding, fitting, phrases and
options). A failure of the service itself (queue full, timeout, server unreachable or still loading)
is retried a few times and then raised as ``ServiceUnavailable``: those images are not recorded, so a
re-run grounds them.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Sequence
from pathlib import Path

from app.batch.in_process import InProcessService
from app.errors import ChordError, ServiceUnavailable
from app.grounding.options import GroundingOptions
from app.grounding.result import GroundingResult
from app.service.records import new_request_id

logger = logging.getLogger(__name__)

# Error codes that say "the service could not answer now", not "this image failed".
TRANSIENT_CODES = frozenset({"busy", "timeout", "shutting_down", "model_loading"})
RETRIES = 6


class ServiceGrounder:
    """In-process: the chunk's files go to the grounding service together, so the scheduler batches them."""

    def __init__(self, chord: InProcessService):
        self.chord = chord

    def ground(self, phrases: tuple[str, ...], paths: Sequence[Path], options: GroundingOptions) -> list[dict]:
        items = [(path.read_bytes(), phrases) for path in paths]
        service = self.chord.service
        outcomes = self.chord.run(service.ground_uploads(items, options, new_request_id()))
        return [_outcome(outcome) for outcome in outcomes]

    def close(self) -> None:
        self.chord.close()


def _outcome(outcome: GroundingResult | ChordError) -> dict:
    if isinstance(outcome, GroundingResult):
        return outcome.to_dict()
    if outcome.code in TRANSIENT_CODES:
        raise ServiceUnavailable(f"the model could not answer: {outcome.message}") from outcome
    return outcome.to_dict()


class ServerGrounder:
    """Against a running Chord server: one ``POST /api/ground/batch`` per chunk, the files sent as they are."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        import httpx

        self.url = url.rstrip("/") + "/api/ground/batch"
        self._client = httpx.Client(timeout=timeout_s)
        self._transport_error = httpx.TransportError

    def ground(self, phrases: tuple[str, ...], paths: Sequence[Path], options: GroundingOptions) -> list[dict]:
        results: list[dict | None] = [None] * len(paths)
        pending = list(range(len(paths)))
        for attempt in range(RETRIES):
            answered, wait_s = self._post(phrases, [paths[i] for i in pending], options)
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
        self, phrases: tuple[str, ...], paths: list[Path], options: GroundingOptions
    ) -> tuple[list[dict] | None, float | None]:
        files = [("images", (p.name, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "image/png")) for p in paths]
        try:
            response = self._client.post(self.url, files=files, data=form_fields(phrases, options))
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


def form_fields(phrases: tuple[str, ...], options: GroundingOptions) -> dict[str, str]:
    """The REST form of a prompt and its options (fields left at their defaults are not sent)."""
    data = {"prompt": "\n".join(phrases), "score_threshold": str(options.score_threshold)}
    if options.max_new_tokens is not None:
        data["max_new_tokens"] = str(options.max_new_tokens)
    if options.prompt_template:
        data["prompt_template"] = options.prompt_template
    if options.tiling is not None:
        data["tiling"] = str(options.tiling).lower()
    return data
