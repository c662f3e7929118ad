"""Open Inference Protocol (KServe V2) over HTTP: thin handlers over the DataPlane.

`handlers(...)` binds the V2 rows of the route table (`routes.ROUTES`, handlers `v2.*`);
the dispatcher (`http.dispatch`) routes, guards and audits them.

Health answers with the status code (200 true, 400 false, as the spec says) and a small
JSON body. Inference accepts JSON with or without a Content-Type header (tritonclient
sends none) and the binary tensor extension (`Inference-Header-Content-Length`). The
repository index takes an empty body, as tritonclient sends it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from shipyard.codecs.v2 import HEADER_LENGTH, decode_request, encode_response
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ProtocolError
from shipyard.serving.http.common import (
    BytesResponse,
    Handler,
    call_of,
    compress_for,
    decode_limits_of,
    endpoint,
    gone_of,
    header,
    header_of,
    json_response,
    read_body,
)
from shipyard.serving.rollout import Action

PROTOCOL = "v2_http"
_HEADER_LENGTH = HEADER_LENGTH.encode("ascii")


class V2Handlers:
    """One handler per V2 endpoint; each decodes, calls the data plane, encodes."""

    def __init__(self, dataplane: DataPlane, *, compress_min_bytes: int) -> None:
        self.dataplane = dataplane
        self.compress_min_bytes = compress_min_bytes

    async def live(self, request: Request) -> Response:
        live = self.dataplane.live()
        return json_response({"live": live}, 200 if live else 400)

    async def ready(self, request: Request) -> Response:
        problem = self.dataplane.not_ready_reason()
        if problem is not None:  # e.g. the audit log cannot be written: say so, and why
            return json_response({"ready": False, "error": problem}, 503, {"Retry-After": "1"})
        ready = self.dataplane.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request.scope)
        return json_response(self.dataplane.model_metadata(name, version))

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request.scope)
        return json_response(self.dataplane.model_config(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request.scope)
        ready = self.dataplane.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 400)

    async def infer(self, request: Request) -> Response:
        received = time.perf_counter_ns()
        scope = request.scope
        body = await read_body(request)
        payload, media_type, headers = await self.answer(scope, body, received)
        response = BytesResponse(payload, media_type=media_type)
        response.raw_headers += headers
        return response

    async def answer(
        self, scope: Scope, body: bytes, received_ns: int
    ) -> tuple[bytes, str, list[tuple[bytes, bytes]]]:
        """Inference on a request's body: the response body, its media type and its headers
        beyond Content-Length and Content-Type. Shared by `infer` and the direct path
        (`http.direct`), which writes them without a Starlette `Response`."""
        name, version = _model(scope)
        limits = decode_limits_of(scope, self.dataplane, name)
        decoded = decode_request(body, header_length=_header_length(scope), limits=limits)
        response = await self.dataplane.infer(
            name,
            decoded,
            version=version,
            protocol=PROTOCOL,
            received_ns=received_ns,
            call=call_of(scope),
            gone=gone_of(scope),
            route_key=header_of(scope),
        )
        payload, json_length = encode_response(response, request=decoded)
        headers: list[tuple[bytes, bytes]] = []
        media_type = "application/json"
        if json_length is not None:
            headers.append((_HEADER_LENGTH, str(json_length).encode("ascii")))
            media_type = "application/octet-stream"
        payload, encoding = compress_for(scope, payload, min_bytes=self.compress_min_bytes)
        for value in encoding.values():
            headers.append((b"content-encoding", value.encode("ascii")))
        return payload, media_type, headers

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
        await self.dataplane.load_model(request.path_params["name"], call=call_of(request.scope))
        return json_response({})

    async def unload(self, request: Request) -> Response:
        await self._optional_json(request)
        await self.dataplane.unload_model(request.path_params["name"], call=call_of(request.scope))
        return json_response({})

    async def rollout(self, request: Request) -> Response:
        return json_response(self.dataplane.rollout_status(request.path_params["name"]))

    async def rollout_promote(self, request: Request) -> Response:
        return await self._decide(request, "promote")

    async def rollout_rollback(self, request: Request) -> Response:
        return await self._decide(request, "rollback")

    async def _decide(self, request: Request, action: Action) -> Response:
        await self._optional_json(request)
        name = request.path_params["name"]
        status = await self.dataplane.decide_rollout(name, action, call=call_of(request.scope))
        return json_response(status)

    async def statistics(self, request: Request) -> Response:
        name = request.path_params.get("name")
        version = request.path_params.get("version")
        return json_response(self.dataplane.statistics(name, version))

    async def _optional_json(self, request: Request) -> dict[str, Any]:
        body = await read_body(request)
        if not body.strip():
            return {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"request body is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ProtocolError("request body must be a JSON object")
        return doc


def handlers(h: V2Handlers) -> dict[str, Handler]:
    """The `v2.*` handlers of the route table, bound to `h`'s data plane."""
    metrics = h.dataplane.metrics
    bound = {
        "v2.live": h.live,
        "v2.ready": h.ready,
        "v2.server_metadata": h.server_metadata,
        "v2.model_metadata": h.model_metadata,
        "v2.model_config": h.model_config,
        "v2.model_ready": h.model_ready,
        "v2.infer": h.infer,
        "v2.statistics": h.statistics,
        "v2.repository_index": h.repository_index,
        "v2.load": h.load,
        "v2.unload": h.unload,
        "v2.rollout": h.rollout,
        "v2.rollout_promote": h.rollout_promote,
        "v2.rollout_rollback": h.rollout_rollback,
    }
    return {name: endpoint(handler, metrics=metrics) for name, handler in bound.items()}


def _model(scope: Scope) -> tuple[str, str | None]:
    params = scope["path_params"]
    return params["name"], params.get("version")


def _header_length(scope: Scope) -> int | None:
    value = header(scope, _HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ProtocolError(
            f"Inference-Header-Content-Length {value!r} is not a non-negative integer"
        )
    return int(value)
