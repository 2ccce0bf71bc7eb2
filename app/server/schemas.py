"""Request and response bodies of the REST API; their descriptions and examples become /docs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.errors import ERROR_CODES
from app.server.forms import MAX_NEW_TOKENS_HELP, PROMPT_TEMPLATE_HELP, SCORE_THRESHOLD_HELP, TILING_HELP

PROMPT_HELP = (
    "What to find: one phrase, or several separated by ';' or newlines (each gets its own label), "
    "in English or Chinese."
)


class PredictRequest(BaseModel):
    """JSON form of a grounding request, for clients that cannot send multipart."""

    image: str = Field(
        ...,
        description="The image file's bytes, base64-encoded; a data URL ('data:image/png;base64,...') works too.",
        examples=["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"],
    )
    prompt: str = Field(..., description=PROMPT_HELP, examples=["the red car; the person on the left"])
    max_new_tokens: int | None = Field(None, ge=1, le=2048, description=MAX_NEW_TOKENS_HELP, examples=[256])
    score_threshold: float = Field(0.0, ge=0.0, le=1.0, description=SCORE_THRESHOLD_HELP, examples=[0.3])
    prompt_template: str | None = Field(None, description=PROMPT_TEMPLATE_HELP, examples=["Find {targets}."])
    tiling: bool | None = Field(None, description=TILING_HELP, examples=[False])


class GroundingResponse(BaseModel):
    """What Chord found: boxes in pixels of the image that was sent (after EXIF rotation)."""

    boxes: list[list[int]] = Field(
        description="One [x1, y1, x2, y2] per object found, integer pixels, origin at the top left.",
        examples=[[[112, 40, 380, 295]]],
    )
    labels: list[str] = Field(
        description="labels[i] names boxes[i]: the phrase or the model's label.", examples=[["the red car"]]
    )
    scores: list[float | None] = Field(
        description="scores[i] is the model's confidence in boxes[i] (0..1), null where the backend gives none.",
        examples=[[0.87]],
    )
    points: list[list[int]] = Field(description="[x, y] points, when the model answered with points.", examples=[[]])
    point_labels: list[str] = Field(description="point_labels[i] names points[i].", examples=[[]])
    text: str = Field(
        description="The model's raw answer.",
        examples=['```json\n[{"bbox_2d": [112, 40, 380, 295], "label": "the red car"}]\n```'],
    )
    image_size: list[int] = Field(description="[width, height] of the image that was sent.", examples=[[640, 480]])
    input_size: list[int] | None = Field(
        description="[width, height] the image was resized to for the model.", examples=[[644, 476]]
    )
    model: str = Field(description="The checkpoint that answered.", examples=["Qwen2.5-VL-7B-Instruct"])
    latency_ms: float = Field(description="Milliseconds the model took for this answer.", examples=[812.4])
    phrases: list[str] = Field(
        description="The phrases asked about, after splitting the prompt.", examples=[["the red car"]]
    )
    confidence: float | None = Field(
        description="The best box's score (0..1); null without a box or without scores.", examples=[0.87]
    )
    needs_review: bool = Field(
        description="True when a person should check this result: no box, no score, or a confidence under "
        "REVIEW_THRESHOLD (0.7 by default).",
        examples=[False],
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code: " + ", ".join(ERROR_CODES), examples=["empty_prompt"])
    message: str = Field(description="What went wrong, for people.", examples=["the prompt is empty"])
    request_id: str | None = Field(
        None,
        description="The request's id, also in the X-Request-ID header and the server's log line for this request; "
        "a batch item's error carries the id of the batch request.",
        examples=["3f9c2a71b0de"],
    )


class ErrorBody(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


class BatchResponse(BaseModel):
    """One entry per image, in the order sent: a result, or ``{"error": {"code", "message", "request_id"}}``
    whose ``request_id`` is the batch request's own (its X-Request-ID)."""

    results: list[GroundingResponse | ErrorBody] = Field(
        description="Results or per-item errors (each with the batch request's request_id), in order."
    )


def error_responses(*codes: str) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the given error codes, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        status, _ = ERROR_CODES[code]
        by_status.setdefault(status, []).append(code)
    return {
        status: {
            "model": ErrorBody,
            "description": "; ".join(f"`{code}`: {ERROR_CODES[code][1]}" for code in group),
        }
        for status, group in sorted(by_status.items())
    }
