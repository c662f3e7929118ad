"""The HTTP transport's app: the route table's dispatcher over each REST transport's handlers.

Every request goes through `common.RequestContextMiddleware` (request id, access log, a
last-resort JSON 500) and `dispatch.HttpDispatcher` (match, admission, body limit, audit);
each REST transport binds the handlers of its rows (`v2.handlers`, `tfserving.handlers`,
`embeddings.handlers`), beside /metrics and the OpenAPI document. Under the server's own
protocol, V2 inference skips these layers (`http.direct`, `HttpApp.direct`). The `Server`
(serving/lifecycle.py) gives it its lifespan.

`HttpApp` is plain ASGI, not a Starlette application: the dispatcher already routes, and
Starlette's own layers (its error and exception middleware and router, three awaits and two
`send` wrappers per request) were a measured share of a small model's request. Starlette's
`Router` still runs the lifespan protocol, and handlers still take Starlette `Request`s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router
from starlette.types import Receive, Scope, Send

from shipyard.serving import openapi
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.http import embeddings, tfserving, v2
from shipyard.serving.http.common import Handler, RequestContextMiddleware
from shipyard.serving.http.direct import DirectInfer
from shipyard.serving.http.dispatch import HttpDispatcher
from shipyard.serving.security import ServerSecurity
from shipyard.serving.settings import ServerSettings

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

Lifespan = Callable[[Any], Any]
"""An async context manager factory: `lifespan(app)` runs around the server's life."""


class HttpApp:
    """The ASGI app: HTTP requests through the request context and the dispatcher; the
    lifespan through Starlette's lifespan protocol. Nothing else is served (uvicorn is
    told to treat WebSocket upgrades as plain HTTP)."""

    def __init__(
        self,
        dispatcher: HttpDispatcher,
        *,
        lifespan: Lifespan,
        access_log: bool,
        direct: DirectInfer | None = None,
    ):
        self._http = RequestContextMiddleware(
            dispatcher, access_log=access_log, extra_headers=dispatcher.extra_headers
        )
        self.router = Router(lifespan=lifespan)
        """Runs the lifespan (`router.lifespan_context(app)` runs it outside a server)."""
        self.direct = direct
        """V2 inference for the server's protocol to answer without this app (`http.direct`;
        None with the access log on, which only this app writes)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            scope["app"] = self
            await self.router.lifespan(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})


def http_app(
    plane: DataPlane,
    security: ServerSecurity,
    settings: ServerSettings,
    *,
    lifespan: Lifespan,
) -> HttpApp:
    """The app serving V2 and TF Serving REST, embeddings, /metrics and OpenAPI."""

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics_text(), media_type=PROMETHEUS_TEXT)

    authorize = security.authorize_http if security.guard is not None else None
    inference = v2.V2Handlers(plane, compress_min_bytes=settings.compress_min_bytes)
    handlers: dict[str, Handler] = {
        **v2.handlers(inference),
        **tfserving.handlers(plane, settings=settings),
        **embeddings.handlers(plane, authorize=authorize),
        "metrics": metrics,
        "openapi": openapi.handler(),
    }
    dispatcher = HttpDispatcher(
        handlers=handlers,
        dataplane=plane,
        security=security,
        metrics_require_auth=settings.metrics_require_auth,
    )
    direct = None if settings.access_log else DirectInfer(dispatcher, inference)
    return HttpApp(dispatcher, lifespan=lifespan, access_log=settings.access_log, direct=direct)
