"""The HTTP transport's app: the route table's dispatcher over each REST transport's handlers.

Every request goes through `dispatch.HttpDispatcher` (match, admission, body limit, audit);
each REST transport binds the handlers of its rows (`v2.handlers`, `tfserving.handlers`,
`embeddings.handlers`), beside /metrics and the OpenAPI document. The `Server`
(serving/lifecycle.py) gives it its lifespan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from shipyard.serving import openapi
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.http import embeddings, tfserving, v2
from shipyard.serving.http.common import Handler, RequestContextMiddleware
from shipyard.serving.http.dispatch import HttpDispatcher
from shipyard.serving.security import ServerSecurity
from shipyard.serving.settings import ServerSettings

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def http_app(
    plane: DataPlane,
    security: ServerSecurity,
    settings: ServerSettings,
    *,
    lifespan: Callable[[Starlette], Any],
) -> Starlette:
    """The Starlette app serving V2 and TF Serving REST, embeddings, /metrics and OpenAPI."""

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics_text(), media_type=PROMETHEUS_TEXT)

    authorize = security.authorize_http if security.guard is not None else None
    handlers: dict[str, Handler] = {
        **v2.handlers(plane, settings=settings),
        **tfserving.handlers(plane, settings=settings),
        **embeddings.handlers(plane, authorize=authorize),
        "metrics": metrics,
        "openapi": openapi.handler(),
    }
    return Starlette(
        lifespan=lifespan,
        middleware=[
            Middleware(RequestContextMiddleware, access_log=settings.access_log),
            Middleware(
                HttpDispatcher,
                handlers=handlers,
                dataplane=plane,
                security=security,
                metrics_require_auth=settings.metrics_require_auth,
            ),
        ],
    )
