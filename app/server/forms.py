"""The grounding options of the REST routes, declared once (form fields, their limits and help)."""

from __future__ import annotations

from fastapi import Form, Request

from app.grounding.options import GroundingOptions

MAX_NEW_TOKENS_HELP = "Most tokens the model may generate for this answer; default MAX_NEW_TOKENS from the settings."
SCORE_THRESHOLD_HELP = (
    "Drop boxes whose confidence score is below this (0 keeps every box); above 0, points (which carry no "
    "score) are dropped too."
)
PROMPT_TEMPLATE_HELP = (
    "Your own prompt around the phrases, holding {targets}, e.g. 'Find {targets}.'; empty: the built-in prompt. "
    "At most MAX_PROMPT_CHARS characters."
)
TILING_HELP = (
    "true: ground a large image in LARGE_IMAGE_MODE 'tiles' (a tile search, each box confirmed by zooming in); "
    "false: no tiles ('tiles' becomes 'refine'); absent: the server's LARGE_IMAGE_MODE."
)


def frame_options(
    request: Request,
    max_new_tokens: int | None = Form(None, ge=1, le=2048, description=MAX_NEW_TOKENS_HELP, examples=[256]),
    score_threshold: float = Form(0.0, ge=0.0, le=1.0, description=SCORE_THRESHOLD_HELP, examples=[0.3]),
    prompt_template: str | None = Form(None, description=PROMPT_TEMPLATE_HELP, examples=["Find {targets}."]),
) -> GroundingOptions:
    """The options of a request whose images are not tiled (video frames)."""
    return request.app.state.service.options(max_new_tokens, score_threshold, prompt_template)


def image_options(
    request: Request,
    max_new_tokens: int | None = Form(None, ge=1, le=2048, description=MAX_NEW_TOKENS_HELP, examples=[256]),
    score_threshold: float = Form(0.0, ge=0.0, le=1.0, description=SCORE_THRESHOLD_HELP, examples=[0.3]),
    prompt_template: str | None = Form(None, description=PROMPT_TEMPLATE_HELP, examples=["Find {targets}."]),
    tiling: bool | None = Form(None, description=TILING_HELP, examples=[False]),
) -> GroundingOptions:
    """The options of a request for whole images."""
    return request.app.state.service.options(max_new_tokens, score_threshold, prompt_template, tiling)
