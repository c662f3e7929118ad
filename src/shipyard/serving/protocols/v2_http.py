"""Open Inference Protocol (KServe V2) over HTTP: thin Starlette routes over the DataPlane.

Health answers with the status code (200 true, 400 false, as the spec says) and a small
JSON body. Inference accepts JSON with or without a Content-Type header (tritonclient
sends none) and the binary tensor extension (`Inference-Header-Content-Length`). The
repository index takes an empty body, as tritonclient sends it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.codecs.v2 import HEADER_LENGTH, decode_request, encode_response
from shipyard.errors import NotFoundError
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ModelNotFound, ProtocolError
from shipyard.serving.metrics import Metrics
from shipyard.serving.protocols.http import (
    Handler,
    compress_for,
    endpoint,
    json_response,
    read_body,
)
from shipyard.serving.settings import LimitsSettings, ServerSettings

PROTOCOL = "v2_http"


class V2Handlers:
    """One handler per V2 endpoint; each decodes, calls the data plane, encodes."""

    def __init__(
        self, dataplane: DataPlane, *, limits: LimitsSettings, compress_min_bytes: int
    ) -> None:
        self.dataplane = dataplane
        self.limits = limits
        self.compress_min_bytes = compress_min_bytes

    async def live(self, request: Request) -> Response:
        live = self.dataplane.live()
        return json_response({"live": live}, 200 if live else 400)

    async def ready(self, request: Request) -> Response:
        problem = self.dataplane.not_ready_reason()
        if problem is not None:  # e.g. no call can authenticate: say so, and why
            return json_response({"ready": False, "error": problem}, 503)
        ready = self.dataplane.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        return json_response(self.dataplane.model_metadata(name, version))

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        return json_response(self.dataplane.model_config(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        ready = self.dataplane.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 400)

    async def infer(self, request: Request) -> Response:
        received = time.perf_counter_ns()
        name, version = _model(request)
        limits = self.dataplane.limits_for(name)
        body = await read_body(request, limit=limits.max_body_bytes)
        decoded = decode_request(
            body,
            header_length=_header_length(request),
            limits=self.dataplane.decode_limits_for(name),
        )
        response = await self.dataplane.infer(
            name, decoded, version=version, protocol=PROTOCOL, received_ns=received
        )
        payload, json_length = encode_response(response, request=decoded)
        headers: dict[str, str] = {}
        media_type = "application/json"
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            media_type = "application/octet-stream"
        payload, encoding = compress_for(request, payload, min_bytes=self.compress_min_bytes)
        headers.update(encoding)
        return Response(payload, headers=headers, media_type=media_type)

    async def repository_index(self, request: Request) -> Response:
        doc = await self._optional_json(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise ProtocolError('"ready" must be true or false')
        return json_response(await self.dataplane.repository_index(ready_only=ready))

    async def load(self, request: Request) -> Response:
        doc = await self._optional_json(request)
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError('"parameters" must be a JSON object')
        overrides = sorted(k for k in params if k == "config" or k.startswith("file:"))
        if overrides:
            raise ProtocolError(
                f"load parameters {overrides} are not supported; put a model.toml and the "
                "package versions in the repository folder instead"
            )
        await self.dataplane.load_model(request.path_params["name"])
        return json_response({})

    async def unload(self, request: Request) -> Response:
        await self._optional_json(request)
        await self.dataplane.unload_model(request.path_params["name"])
        return json_response({})

    async def statistics(self, request: Request) -> Response:
        name = request.path_params.get("name")
        version = request.path_params.get("version")
        return json_response(self.dataplane.statistics(name, version))

    async def _optional_json(self, request: Request) -> dict[str, Any]:
        body = await read_body(request, limit=self.limits.max_body_bytes)
        if not body.strip():
            return {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"request body is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ProtocolError("request body must be a JSON object")
        return doc


def routes(dataplane: DataPlane, *, settings: ServerSettings) -> list[Route]:
    """Every V2 REST route, bound to `dataplane`."""
    h = V2Handlers(
        dataplane, limits=settings.limits, compress_min_bytes=settings.compress_min_bytes
    )
    metrics = dataplane.metrics

    def c(handler: Handler) -> Handler:
        return counted(metrics, handler)

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    get, post = ["GET"], ["POST"]
    # Inference first: Starlette tries routes in order, and infer is nearly all the traffic
    # (no two of these patterns match the same path, so the order changes nothing else).
    return [
        Route(f"{model}/infer", endpoint(c(h.infer)), methods=post),
        Route(f"{version}/infer", endpoint(c(h.infer)), methods=post),
        Route("/v2/health/live", endpoint(c(h.live)), methods=get),
        Route("/v2/health/ready", endpoint(c(h.ready)), methods=get),
        Route("/v2", endpoint(c(h.server_metadata)), methods=get),
        Route("/v2/models/stats", endpoint(c(h.statistics)), methods=get),
        Route(f"{model}/stats", endpoint(c(h.statistics)), methods=get),
        Route(f"{version}/stats", endpoint(c(h.statistics)), methods=get),
        Route(model, endpoint(c(h.model_metadata)), methods=get),
        Route(version, endpoint(c(h.model_metadata)), methods=get),
        Route(f"{model}/ready", endpoint(c(h.model_ready)), methods=get),
        Route(f"{version}/ready", endpoint(c(h.model_ready)), methods=get),
        Route(f"{model}/config", endpoint(c(h.model_config)), methods=get),
        Route(f"{version}/config", endpoint(c(h.model_config)), methods=get),
        Route("/v2/repository/index", endpoint(c(h.repository_index)), methods=post),
        Route("/v2/repository/models/{name}/load", endpoint(c(h.load)), methods=post),
        Route("/v2/repository/models/{name}/unload", endpoint(c(h.unload)), methods=post),
    ]


_MODELS = "/v2/models/"
_INFER = "/infer"


class InferFastPath:
    """`POST /v2/models/NAME[/versions/N]/infer` straight to its handler, past the router.

    Innermost middleware (after request ids, auth, audit and body limits, which all still
    apply): inference is nearly all of a server's traffic, and Starlette's exception
    middleware, route matching and endpoint wrapping cost a tiny model's request about a
    sixth of its event-loop time. The handler is the same `endpoint(infer)` the routes use
    (it turns every failure into the JSON error response), so answers do not change; any
    other request, or one with a root_path, goes through the router as before.
    """

    def __init__(self, app: ASGIApp, *, handler: Handler, metrics: Metrics | None = None) -> None:
        self.app = app
        self.handler = handler
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            params = _infer_params(scope["path"])
            if params is not None:
                scope["path_params"] = params
                response = await self.handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        if self.metrics is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics

        async def send_counting(message: Message) -> None:
            # a 404 no handler counted (see `counted`) is the router's: no such route
            start = message["type"] == "http.response.start"
            if start and message["status"] == 404 and not scope.get(_COUNTED_404):
                metrics.observe_not_found("route")
            await send(message)

        await self.app(scope, receive, send_counting)


_COUNTED_404 = "shipyard.not_found_counted"


def counted(metrics: Metrics, handler: Handler) -> Handler:
    """`handler`, counting each ModelNotFound as `shipyard_not_found_total{kind=model|version}`
    and any other NotFoundError (a path no route means) as kind=route; wrap it in `endpoint`."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except NotFoundError as exc:
            if isinstance(exc, ModelNotFound):
                kind = "model" if exc.version is None else "version"
            else:
                kind = "route"
            metrics.observe_not_found(kind)
            request.scope[_COUNTED_404] = True
            raise

    return wrapped


def _infer_params(path: str) -> dict[str, str] | None:
    """{"name": ..., ["version": ...]} when `path` is an infer route (as the routes match it)."""
    if not (path.startswith(_MODELS) and path.endswith(_INFER)):
        return None
    parts = path[len(_MODELS) : -len(_INFER)].split("/")
    if len(parts) == 1 and parts[0]:
        return {"name": parts[0]}
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return {"name": parts[0], "version": parts[2]}
    return None


def fast_path(dataplane: DataPlane, *, settings: ServerSettings) -> Middleware:
    """The `InferFastPath` middleware for `dataplane` (same handler as the infer routes)."""
    h = V2Handlers(
        dataplane, limits=settings.limits, compress_min_bytes=settings.compress_min_bytes
    )
    handler = endpoint(counted(dataplane.metrics, h.infer))
    return Middleware(InferFastPath, handler=handler, metrics=dataplane.metrics)


def _model(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version")


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ProtocolError(
            f"Inference-Header-Content-Length {value!r} is not a non-negative integer"
        )
    return int(value)
