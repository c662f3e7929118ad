"""The ASGI application: settings + repository -> manager, data plane and HTTP routes.

The lifespan loads every model before the first request and unloads them all (after their
in-flight requests) on shutdown; the repository poller runs in between. Every request goes
through the route table's dispatcher (`protocols.http_dispatch`); each REST transport binds
the handlers of its rows (`v2_http.handlers`, `tfserving_http.handlers`, ...).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from shipyard.serving import openapi
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.manager import ModelManager
from shipyard.serving.metrics import Metrics
from shipyard.serving.protocols import embeddings_http, tfserving_http, v2_http
from shipyard.serving.protocols.http import Handler, RequestContextMiddleware
from shipyard.serving.protocols.http_dispatch import HttpDispatcher
from shipyard.serving.repository import ModelRepository
from shipyard.serving.security import build_security
from shipyard.serving.settings import ServerSettings

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def build_dataplane(settings: ServerSettings) -> DataPlane:
    """A data plane over a fresh manager and metrics registry for `settings.repository`."""
    metrics = Metrics()
    kek = None
    if settings.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(settings.key_file)  # read once; a bad key file fails before serving
    manager = ModelManager(
        ModelRepository(settings.repository), settings=settings, metrics=metrics, kek=kek
    )
    return DataPlane(manager, metrics)


def build_app(
    settings: ServerSettings, *, dataplane: DataPlane | None = None, freeze_gc: bool = False
) -> Starlette:
    """The Starlette app serving V2 REST and /metrics; `app.state.dataplane` holds the core.

    `freeze_gc` (what `shipyard serve` uses; off for servers inside another process, such
    as tests) moves every object alive once the models are loaded out of the garbage
    collector's reach (`gc.freeze()`): the libraries and models make a heap of a few hundred
    thousand objects, and without it every full collection walks all of them, a 20-30 ms
    stall of the event loop that a busy server hits several times a second and that every
    in-flight request pays (measured: p99 30 ms against p50 4.6 ms).
    """
    plane = dataplane or build_dataplane(settings)
    security = build_security(settings, plane)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        security.start()
        try:
            await plane.manager.start()
            if freeze_gc:
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                await plane.manager.stop()
        finally:
            await asyncio.to_thread(security.stop)  # drains the audit queue

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics_text(), media_type=PROMETHEUS_TEXT)

    authorize = security.authorize_http if security.guard is not None else None
    handlers: dict[str, Handler] = {
        **v2_http.handlers(plane, settings=settings),
        **tfserving_http.handlers(plane, settings=settings),
        **embeddings_http.handlers(plane, authorize=authorize),
        "metrics": metrics,
        "openapi": openapi.handler(),
    }
    app = Starlette(
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
    app.state.dataplane = plane
    app.state.security = security  # security.authorize is the gRPC servicer's auth hook
    return app
