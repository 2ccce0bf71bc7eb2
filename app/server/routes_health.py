"""``GET /health``: cheap, never touches the model, answers while the model is busy."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["operations"])
LIVE_KEYS = ("uptime_s", "pid")

HEALTH_EXAMPLES = {
    200: {"status": "ok", "model": "Qwen2.5-VL-7B-Instruct", "device": "cuda", "uptime_s": 812.0,
          "requests_served": 41, "queue_depth": 0},
    503: {"status": "loading", "model": "models/Qwen2.5-VL-7B-Instruct", "device": "auto", "uptime_s": 3.2},
}  # fmt: skip


@router.get(
    "/health",
    responses={
        200: {
            "description": "The model is loaded and serving.",
            "content": {"application/json": {"example": HEALTH_EXAMPLES[200]}},
        },
        503: {
            "description": "Not ready: `status` is `loading`, `failed` with the load error, `stalled` (work "
            "waits and the model made no progress for STALL_TIMEOUT_S; `stalled_s` says how long), or "
            "`engine_unreachable` (ENGINE=openai) with the engine's last problem under `engine`.",
            "content": {"application/json": {"example": HEALTH_EXAMPLES[503]}},
        },
    },
)  # fmt: skip
async def health(request: Request) -> JSONResponse:
    """Readiness: model, device, uptime, requests served and queue depth; 503 until the model has loaded,
    and with ENGINE=openai while the engine server does not answer."""
    service = request.app.state.service
    return JSONResponse(service.health(), status_code=200 if service.healthy else 503)


@router.get("/health/live", responses={200: {"description": "The server process answers (it may still be loading)."}})
async def live(request: Request) -> JSONResponse:
    """Liveness, as Kubernetes means it: the process answers. Restart it only when this fails."""
    service = request.app.state.service
    return JSONResponse({"status": "alive", **{k: v for k, v in service.health().items() if k in LIVE_KEYS}})


@router.get(
    "/health/ready",
    responses={200: {"description": "The model is loaded and making progress."}, 503: {"description": "Not ready."}},
)
async def ready(request: Request) -> JSONResponse:
    """Readiness, as Kubernetes means it: requests sent now would be answered (the same answer as ``/health``)."""
    return await health(request)
