"""What a caller may choose about one grounding, the same for every front end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroundingOptions:
    """``None`` means the server's setting (MAX_NEW_TOKENS, TILING); a template is already checked."""

    max_new_tokens: int | None = None
    score_threshold: float = 0.0
    prompt_template: str | None = None
    tiling: bool | None = None
