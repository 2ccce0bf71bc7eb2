"""Any path under ``/api/`` that no Chord route takes: 404 ``not_found`` or 405 ``method_not_allowed``.

Without it such a request would fall through to the Gradio app mounted at ``/`` and get Gradio's
``{"detail": "Not Found"}`` (a wrong method too: the mount takes every path). Include its router
after the routers it is given.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.routing import Match

from app.errors import MethodNotAllowed, NotFound
from app.server.routes_api import RecordedRoute

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def unknown_api_paths(*routers: APIRouter) -> APIRouter:
    """A router answering every ``/api/`` path that none of ``routers`` takes with the method asked."""
    known = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    fallback = APIRouter(prefix="/api", route_class=RecordedRoute, include_in_schema=False)

    @fallback.api_route("/{path:path}", methods=ANY_METHOD)
    async def unknown_api_path(request: Request) -> None:
        """405 with the methods the path does take, when a Chord route has it; 404 otherwise."""
        allowed = {
            method for route in known if route.matches(request.scope)[0] is Match.PARTIAL for method in route.methods
        }
        if allowed:
            methods = ", ".join(sorted(allowed))
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; use {methods}", allowed)
        raise NotFound(f"no such API path: {request.url.path}; see /docs for the API")

    return fallback
