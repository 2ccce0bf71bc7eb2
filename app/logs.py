"""Configure logging once: one format, to a stream (stdout for the server so Supervisor keeps it)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", stream: TextIO = sys.stdout) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=stream, force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
