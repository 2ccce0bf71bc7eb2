"""A bounded least-recently-used store of an image's work, and the key that names an image.

Chord's prompt puts the image before the question (system turn, then ``<|vision_start|>`` image
tokens ``<|vision_end|>``, then the phrase), so everything up to the end of the image tokens is
the same for every question about that image. ``ByteLru`` holds such work (processor outputs in
the server, the prompt prefix's key/value cache where the model runs) within a byte budget and
counts its hits and misses for ``/metrics``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from PIL import Image

Value = TypeVar("Value")


@dataclass(frozen=True)
class CacheCounts:
    """What a cache has done since it started: lookups that found their entry, and those that did not."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0


class ByteLru(Generic[Value]):
    """Entries with a size in bytes; the least recently used go when the total passes ``max_bytes``.

    An entry larger than the whole budget is not kept. Thread-safe.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Value | None:
        """The entry (now the most recently used), or None; counted as a hit or a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: Value, nbytes: int) -> None:
        with self._lock:
            if nbytes > self.max_bytes:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def counts(self) -> CacheCounts:
        with self._lock:
            return CacheCounts(self._hits, self._misses, len(self._entries), self._bytes)


def image_key(image: Image.Image, settings: tuple) -> bytes:
    """A digest of the image's pixels, mode and size, and the processor ``settings`` it is prepared with."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((image.mode, image.size, settings)).encode())
    digest.update(image.tobytes())
    return digest.digest()
