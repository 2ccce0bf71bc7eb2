"""One log line and one metrics sample per grounding request, whichever front end served it."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from app.service.metrics import Metrics

logger = logging.getLogger("app.server.requests")


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class RequestRecord:
    """What the request log line says; filled in as the request goes along."""

    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    image_wh: tuple[int, int] | None = None
    phrase_chars: int | None = None
    boxes: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def finish(self, metrics: Metrics, status: int, error_code: str | None = None) -> None:
        seconds = time.perf_counter() - self.started
        metrics.observe(self.endpoint, status, seconds, error_code)
        image = "-" if self.image_wh is None else f"{self.image_wh[0]}x{self.image_wh[1]}"
        logger.log(
            logging.ERROR if status == 500 else logging.INFO,
            "request id=%s endpoint=%s image=%s phrase_chars=%s boxes=%s latency_ms=%.1f status=%d%s",
            self.request_id, self.endpoint, image, _or_dash(self.phrase_chars), _or_dash(self.boxes),
            seconds * 1000, status, "" if error_code is None else f" error={error_code}",
        )  # fmt: skip


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
