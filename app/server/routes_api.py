"""The REST API: ``POST /api/ground`` (multipart), ``/api/predict`` (JSON, base64) and ``/api/ground/batch``."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.routing import APIRoute
from starlette.responses import Response

from app.errors import ChordError, InvalidImage, InvalidRequest, PayloadTooLarge
from app.grounding.options import GroundingOptions
from app.grounding.result import GroundingResult
from app.server.errors import as_chord_error, error_body, error_response
from app.server.forms import image_options
from app.server.schemas import (
    PROMPT_HELP,
    BatchResponse,
    GroundingResponse,
    PredictRequest,
    error_responses,
)
from app.service.records import RequestRecord
from app.service.uploads import ACCEPTED_TEXT

logger = logging.getLogger(__name__)


IMAGE_HELP = f"The image file ({ACCEPTED_TEXT}); its EXIF rotation is applied."
GROUND_ERRORS = error_responses(
    "unauthorized",
    "unsupported_media_type",
    "payload_too_large",
    "image_too_large",
    "prompt_too_long",
    "out_of_memory",
    "invalid_image",
    "missing_image",
    "empty_prompt",
    "invalid_request",
    "model_loading",
    "busy",
    "timeout",
    "engine_unavailable",
    "engine_rejected",
    "engine_timeout",
    "internal_error",
)


class RecordedRoute(APIRoute):
    """Gives each request an id, turns any failure into the one error shape, and logs one line."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def recorded(request: Request) -> Response:
            record = RequestRecord(endpoint=self.path)
            request.state.request_id = record.request_id
            request.state.record = record
            try:
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure gets the error shape and a log line
                error = as_chord_error(exc)
                if error.status >= 500 and error.code == "internal_error":
                    logger.error("request id=%s failed", record.request_id, exc_info=exc)
                response = error_response(error, record.request_id)
                record.finish(request.app.state.service.metrics, error.status, error.code)
                return response
            response.headers["X-Request-ID"] = record.request_id
            record.finish(request.app.state.service.metrics, response.status_code)
            return response

        return recorded


router = APIRouter(prefix="/api", tags=["grounding"], route_class=RecordedRoute)


@router.post("/ground", response_model=GroundingResponse, responses=GROUND_ERRORS)
async def ground(
    request: Request,
    image: UploadFile = File(..., description=IMAGE_HELP),
    prompt: str = Form(..., description=PROMPT_HELP, examples=["the red car; the person on the left"]),
    options: GroundingOptions = Depends(image_options),
) -> dict:
    """Find the objects a prompt names in an uploaded image (multipart form)."""
    service = request.app.state.service
    phrases = service.phrases(prompt, request.state.record)
    data = await read_upload(image, service.settings.max_upload_bytes)
    result = await service.ground_upload(data, phrases, request.state.record, options)
    return result.to_dict()


@router.post("/predict", response_model=GroundingResponse, responses=GROUND_ERRORS)
async def predict(request: Request, body: PredictRequest) -> dict:
    """Find the objects a prompt names in a base64-encoded image (JSON body)."""
    service = request.app.state.service
    phrases = service.phrases(body.prompt, request.state.record)
    options = service.options(body.max_new_tokens, body.score_threshold, body.prompt_template, body.tiling)
    result = await service.ground_upload(_from_base64(body.image), phrases, request.state.record, options)
    return result.to_dict()


@router.post("/ground/batch", response_model=BatchResponse, responses=GROUND_ERRORS)
async def ground_batch(
    request: Request,
    images: list[UploadFile] = File(..., description="One or more image files, in order. " + IMAGE_HELP),
    prompt: list[str] = Form(
        ...,
        description="One prompt for every image, or one prompt per image (same order). " + PROMPT_HELP,
        examples=[["the red car"]],
    ),
    options: GroundingOptions = Depends(image_options),
) -> dict:
    """Ground several images and/or prompts in one call; one result (or error) per image, in order.

    The requests go through the batching scheduler together, so they share batched generations.
    An item that fails (an unreadable image, a full queue) gets its own error entry; the others
    still get their results.
    """
    service = request.app.state.service
    if len(prompt) not in (1, len(images)):
        raise InvalidRequest(f"send one prompt for all {len(images)} images or one per image, not {len(prompt)}")
    if len(images) > service.settings.max_queue:
        raise InvalidRequest(f"at most MAX_QUEUE={service.settings.max_queue} images per call, got {len(images)}")
    prompts = prompt * len(images) if len(prompt) == 1 else prompt
    record = request.state.record
    items = []
    for upload, text in zip(images, prompts, strict=True):
        try:
            phrases = service.phrases(text)
        except ChordError as exc:
            phrases = exc
        items.append((await read_upload(upload, service.settings.max_upload_bytes, strict=False), phrases))
    groundable = [(data, p) for data, p in items if isinstance(data, bytes) and isinstance(p, tuple)]
    outcomes = iter(await service.ground_uploads(groundable, options, record.request_id))
    results = []
    for data, phrases in items:
        failed = data if isinstance(data, ChordError) else phrases if isinstance(phrases, ChordError) else None
        outcome = failed or next(outcomes)
        results.append(_item_answer(outcome, record.request_id))
    record.boxes = sum(len(r.get("boxes", [])) for r in results)
    record.phrase_chars = sum(len(p) for p in prompts)
    return {"results": results}


def _item_answer(outcome: GroundingResult | ChordError, request_id: str) -> dict:
    return outcome.to_dict() if isinstance(outcome, GroundingResult) else error_body(outcome, request_id)


async def read_upload(upload: UploadFile, limit: int, strict: bool = True) -> bytes | ChordError:
    """An uploaded file's bytes, never more than ``limit`` + 1 of them read (413 past it).

    With ``strict=False`` the error is returned instead of raised (one batch item among others).
    """
    data = await upload.read(limit + 1)
    if len(data) <= limit:
        return data
    error = PayloadTooLarge(f"the upload is larger than {limit / 1e6:.1f} MB (MAX_UPLOAD_BYTES)")
    if strict:
        raise error
    return error


def _from_base64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("'image' is not valid base64") from None
