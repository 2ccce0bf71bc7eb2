"""A result's overall confidence and whether a person should check it. Pure.

The confidence is the best box's score (None without a box, or when no box has a score); a result
needs review when it has no box, no score, or a best score under the review threshold
(REVIEW_THRESHOLD, 0.7 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_REVIEW_THRESHOLD = 0.7


def confidence_of(scores: Sequence[float | None]) -> float | None:
    """The best of the known box scores; None without any."""
    known = [s for s in scores if s is not None]
    return max(known) if known else None


def needs_review(confidence: float | None, threshold: float = DEFAULT_REVIEW_THRESHOLD) -> bool:
    """True without a confidence (no box, or no score) or when it is under ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in 0..1, got {threshold}")
    return confidence is None or confidence < threshold
