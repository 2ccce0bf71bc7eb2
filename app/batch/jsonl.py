"""Append-only JSON Lines that survive a kill: each line is written whole, then synced.

A reader ignores a trailing partial line (a crash mid-write on a filesystem that allows one), and
a writer opening the file cuts such a tail first, so the next line never glues onto it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def read_records(path: str | Path) -> list[dict]:
    """Every complete JSON object line of ``path`` (none when it does not exist); bad lines are skipped."""
    return list(_complete_records(Path(path)))


def _complete_records(path: Path) -> Iterator[dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a partial line that was never finished
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            logger.warning("%s line %d is not JSON; ignored", path, number)
            continue
        if isinstance(record, dict):
            yield record
        else:
            logger.warning("%s line %d is not a JSON object; ignored", path, number)


class JsonlWriter:
    """Appends one JSON object per line; every ``write`` is one ``os.write`` of the whole line plus fsync."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # a regular file takes it in one call; the loop only guards against a short write
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cut_partial_tail(path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        logger.warning("%s ended in a partial line (%d bytes); cut it", path, len(data) - keep)
        with path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
