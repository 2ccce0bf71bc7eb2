"""Which results deserve a second look: the overall confidence is the best box's score. Pure.

Until every result carries ``confidence`` and ``needs_review`` itself, the page computes them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REVIEW_BELOW = 0.7  # a best score under this (or no box, or no score) needs a person's look


@dataclass(frozen=True)
class Review:
    confidence: float | None  # the best box's score; None without a box or without any score
    needs_review: bool
    boxes: int


def review(scores: Sequence[float | None]) -> Review:
    """The overall confidence of one result's box scores, and whether it needs review."""
    known = [s for s in scores if s is not None]
    confidence = max(known) if known else None
    return Review(confidence, confidence is None or confidence < REVIEW_BELOW, len(scores))
