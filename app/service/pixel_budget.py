"""Decoded pixels in flight across all requests: what a small upload can cost once it is decoded.

Uploads are bounded by what they cost decoded, not by their bytes: a 200 KB WebP can hold
100 megapixels. A request holds the pixels of its image while it is decoded and, once the image is
fitted to the model, the fitted pixels until it is answered. A request that would push the total
past the budget waits for others to finish (at most ``wait_s``, then 503 ``busy``); one that could
never fit, even alone, gets 413 at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from app.errors import ImageTooLarge, QueueFull


class PixelHold:
    """One request's share of the budget; ``shrink`` gives back what it no longer needs."""

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget = budget
        self.pixels = pixels

    async def shrink(self, pixels: int) -> None:
        if pixels < self.pixels:
            freed, self.pixels = self.pixels - pixels, pixels
            await asyncio.shield(self._budget.give_back(freed))


class PixelBudget:
    def __init__(self, capacity: int, wait_s: float, on_change: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.held = 0
        self._on_change = on_change
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[PixelHold]:
        """Hold ``pixels`` for the block; ImageTooLarge past the capacity, QueueFull after ``wait_s``."""
        if pixels > self.capacity:
            raise ImageTooLarge(
                f"decoding this needs {pixels / 1e6:.0f} megapixels at once; the server decodes at most "
                f"{self.capacity / 1e6:.0f} (DECODE_BUDGET_PIXELS): send a smaller image"
            )
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.held + pixels <= self.capacity), self.wait_s)
            except asyncio.TimeoutError:  # the builtin TimeoutError on Python >= 3.11
                raise QueueFull(
                    f"busy: {self.held / 1e6:.0f} megapixels are being decoded (DECODE_BUDGET_PIXELS); "
                    "try again in a moment",
                    retry_after_s=max(1, math.ceil(self.wait_s)),
                ) from None
            self._add(pixels)
        share = PixelHold(self, pixels)
        try:
            yield share
        finally:
            await asyncio.shield(self.give_back(share.pixels))  # given back even when the caller is cancelled

    async def give_back(self, pixels: int) -> None:
        async with self._changed:
            self._add(-pixels)
            self._changed.notify_all()

    def _add(self, pixels: int) -> None:
        self.held += pixels
        if self._on_change is not None:
            self._on_change(self.held)
