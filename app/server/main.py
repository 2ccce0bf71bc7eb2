"""Wiring: one FastAPI app with Chord's routes, the Gradio UI mounted at ``/`` after them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Mount

from app.errors import ChordError
from app.server import routes_api, routes_health, routes_metrics, routes_video
from app.server.access import ApiKeyMiddleware, ui_logins, warn_if_exposed
from app.server.client_files import ClientFileGuard
from app.server.errors import install_error_handlers
from app.server.login_guard import LoginGuard
from app.server.request_body import BodyLimit
from app.server.routes_fallback import unknown_api_paths
from app.service.service import GroundingService, Loader, load_engine
from app.settings import PROJECT_ROOT, Settings
from app.ui.page import CSS, build_ui

DESCRIPTION = (
    "Visual grounding: send an image and a phrase, get boxes back in pixels of that image. "
    "Several phrases: separate them with ';' or newlines. Errors are "
    '`{"error": {"code", "message", "request_id"}}`. The browser UI is at `/`.'
)


# Never served or read for a client, whatever Gradio's other checks say.
BLOCKED_PATHS = ["/proc", "/sys", "/dev", "/etc", str(PROJECT_ROOT / "config"), str(PROJECT_ROOT / "run")]
# One image, base64 (4/3) or multipart, plus the form's text fields.
SINGLE_IMAGE_ROUTES = ("/api/ground", "/api/predict")
FORM_OVERHEAD_BYTES = 1_000_000


def body_limits(settings: Settings) -> Callable[[str], int]:
    """The body cap of each path: near MAX_UPLOAD_BYTES for one image, MAX_REQUEST_BYTES elsewhere."""
    single = settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES

    def limit_for(path: str) -> int:
        return single if path in SINGLE_IMAGE_ROUTES else settings.max_request_bytes

    return limit_for


def create_app(
    settings: Settings,
    loader: Loader = load_engine,
    on_load_failure: Callable[[ChordError], None] | None = None,
) -> FastAPI:
    # Gradio makes no outside connection with analytics off, SSR off and no share link (read at call time).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    service = GroundingService(settings, loader, on_load_failure)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start_loading()  # in the background: the port answers (503 on /health) at once
        yield
        service.close()

    app = FastAPI(title="Chord", description=DESCRIPTION, version="0.1.0", lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app)
    # Chord's routes first: routes added after the mount at "/" would never be reached.
    app.include_router(routes_health.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_api.router)
    app.include_router(routes_video.router)
    app.include_router(unknown_api_paths(routes_api.router, routes_video.router))  # last of the /api routers
    warn_if_exposed(settings)
    app = gr.mount_gradio_app(
        app,
        build_ui(service),
        path="/",
        ssr_mode=False,
        footer_links=["api", "settings"],
        run_history=False,
        css=CSS,
        server_name=settings.host,
        server_port=settings.port,
        auth=ui_logins(settings),
        auth_message="Chord: sign in (programs: the user 'api' with the API key as password)",
        max_file_size=settings.max_request_bytes,
        blocked_paths=BLOCKED_PATHS,
    )
    gradio_app = next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "")
    # Gradio checks the file paths a client names only once its Blocks "has launched", which
    # mount_gradio_app never sets; set it so Gradio's own checks hold too (ClientFileGuard comes first).
    gradio_app.get_blocks().has_launched = True
    # The last added runs first: the key, then the body's size, then the files it names.
    app.add_middleware(ClientFileGuard)
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, gradio_app=gradio_app)
    app.add_middleware(LoginGuard, metrics=service.metrics)
    return app
