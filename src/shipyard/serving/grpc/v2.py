"""Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService` on grpc.aio.

A thin transport like `http.v2`: each RPC decodes its message (`codecs.grpc`), calls the
shared `DataPlane` and encodes the answer. `listener.GrpcServer` listens for it on the
same event loop as uvicorn; the `Server` (serving/lifecycle.py) starts it once the models are
loaded and stops it (in-flight RPCs finish within the grace period) before they unload.

Errors: a `ShipyardError` becomes the gRPC status of its HTTP status (`grpc_status`) with
its message; anything else is logged and answered INTERNAL. `ModelStreamInfer` answers
each request on the stream as it completes (several run at once, up to `STREAM_WINDOW`),
a failed one as `error_message`, like Triton.

Authentication: `GrpcServer(authenticate=...)` runs in `gate.CallGate`, an interceptor,
before a call's message is read (so anonymous calls cannot make the server hold big messages);
it also logs each call and puts its peer address in the audit records.

Authorization: pass `authorize`, an async callable `(metadata, method, model, client=)`
that returns who is calling (a token name) or raises a `ShipyardError` (401/403) to refuse;
`metadata` holds the call's text metadata (lower-case keys), `method` is the RPC's name (its
scope is in `routes.GRPC_METHODS`), `model` the model named in the request or None. Audited
calls reach the data plane with their `CallContext`, which emits their audit events.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn, Protocol

import grpc

from shipyard.codecs import grpc as grpc_codec
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.errors import ShipyardError
from shipyard.serving.calls import ANONYMOUS, CallContext
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ModelNotFound, Overloaded
from shipyard.serving.grpc.gate import client_address
from shipyard.serving.logs import request_id

SERVICE = "inference.GRPCInferenceService"
"""The wire name every V2 gRPC client calls (KServe's and Triton's proto package)."""
PROTOCOL = "v2_grpc"
STREAM_WINDOW = 64
"""Requests of one ModelStreamInfer stream running or answered but not yet sent; more wait."""


class Authorize(Protocol):
    """Who calls `method` on `model` (a token name or ANONYMOUS); raises 401/403/503."""

    def __call__(
        self, metadata: Mapping[str, str], method: str, model: str | None, *, client: str | None
    ) -> Awaitable[str]: ...


Handler = Callable[[Any, Any], Awaitable[Any]]

log = logging.getLogger("shipyard.serving.grpc")

_CODES: dict[int, Any] = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    HTTPStatus.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(status: int) -> Any:
    """The gRPC status code for an HTTP status (other 4xx: INVALID_ARGUMENT, else INTERNAL)."""
    if status in _CODES:
        return _CODES[status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class _Rpc:
    call: Callable[..., Awaitable[Any]]
    model: Callable[[Any], str | None]
    with_call: bool = False
    """The handler takes the call's CallContext too (inference and repository control)."""


class V2GrpcServicer:
    """The V2 RPCs over one DataPlane; `method_handlers()` is what a grpc server registers."""

    def __init__(self, dataplane: DataPlane, *, authorize: Authorize | None = None) -> None:
        self.dataplane = dataplane
        self.authorize = authorize
        self._arrivals = dataplane.manager.arrivals
        """Told of each inference call: a gRPC channel can send another at any time, so
        batches wait out their queue delay for a while after one (`serving.arrivals`)."""

    # -- health and metadata --------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # Triton answers ready=false (not NOT_FOUND) for a model it does not know.
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except ModelNotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(
            **self.dataplane.model_metadata(request.name, request.version or None)
        )

    async def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        doc = self.dataplane.model_config(request.name, request.version or None)
        return grpc_codec.config_message(doc)

    # -- inference ------------------------------------------------------------------------

    async def model_infer(
        self,
        request: pb.ModelInferRequest,
        call: CallContext | None = None,
        route_key: Callable[[str], str | None] | None = None,
    ) -> pb.ModelInferResponse:
        received = time.perf_counter_ns()
        self._arrivals.grpc_call()
        limits = self.dataplane.decode_limits_for(request.model_name)
        decoded = grpc_codec.decode_infer_request(request, limits=limits)
        response = await self.dataplane.infer(
            request.model_name,
            decoded,
            version=request.model_version or None,
            protocol=PROTOCOL,
            received_ns=received,
            call=call,
            route_key=route_key,
        )
        return grpc_codec.encode_infer_response(response)

    async def model_stream_infer(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        metadata: Mapping[str, str],
        client: str | None = None,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request as it completes; refusal by `authorize` ends the stream.

        At most STREAM_WINDOW requests are running or answered but not yet sent, so a
        client that sends faster than it reads waits instead of filling the server.
        """
        replies: asyncio.Queue[pb.ModelStreamInferResponse | BaseException | None]
        replies = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest, who: str) -> None:
            # a task of its own: this id stays in its copy of the context
            rid = metadata.get("x-request-id", "")[:64] or _new_request_id()
            request_id.set(rid)
            call = CallContext(principal=who, request_id=rid, protocol=PROTOCOL, client=client)
            try:
                infer_response = await self.model_infer(request, call, metadata.get)
                reply = pb.ModelStreamInferResponse(infer_response=infer_response)
            except ShipyardError as exc:
                reply = pb.ModelStreamInferResponse(error_message=exc.message)
            except Exception:
                log.exception("unexpected error in %s/ModelStreamInfer", SERVICE)
                reply = pb.ModelStreamInferResponse(error_message=_INTERNAL)
            replies.put_nowait(reply)

        async def read() -> None:
            try:
                async for request in requests:
                    who = await self._check(
                        metadata, "ModelStreamInfer", request.model_name, client
                    )
                    await window.acquire()
                    task = asyncio.create_task(answer(request, who))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
                replies.put_nowait(None)
            except Exception as exc:
                replies.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            while (item := await replies.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                window.release()
        finally:
            for task in (reader, *running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)

    # -- statistics and model repository --------------------------------------------------

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        doc = self.dataplane.statistics(request.name or None, request.version or None)
        return grpc_codec.statistics_message(doc)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        rows = await self.dataplane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows]
        )

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, call: CallContext | None = None
    ) -> pb.RepositoryModelLoadResponse:
        grpc_codec.check_load_parameters(request.parameters)
        await self.dataplane.load_model(request.model_name, call=call)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, call: CallContext | None = None
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload_model(request.model_name, call=call)
        return pb.RepositoryModelUnloadResponse()

    # -- registration ---------------------------------------------------------------------

    def _rpcs(self) -> dict[str, _Rpc]:
        return {
            "ServerLive": _Rpc(self.server_live, _no_model),
            "ServerReady": _Rpc(self.server_ready, _no_model),
            "ModelReady": _Rpc(self.model_ready, _name),
            "ServerMetadata": _Rpc(self.server_metadata, _no_model),
            "ModelMetadata": _Rpc(self.model_metadata, _name),
            "ModelConfig": _Rpc(self.model_config, _name),
            "ModelInfer": _Rpc(self.model_infer, _model_name, with_call=True),
            "ModelStatistics": _Rpc(self.model_statistics, _name),
            "RepositoryIndex": _Rpc(self.repository_index, _no_model),
            "RepositoryModelLoad": _Rpc(self.repository_model_load, _model_name, with_call=True),
            "RepositoryModelUnload": _Rpc(
                self.repository_model_unload, _model_name, with_call=True
            ),
        }

    def method_handlers(self) -> dict[str, Any]:
        """One grpc method handler per RPC of the proto's service, keyed by method name."""
        unary = self._rpcs()
        handlers: dict[str, Any] = {}
        handler: Any
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            if method.name == "ModelStreamInfer":
                factory, handler = grpc.stream_stream_rpc_method_handler, self._stream
            else:
                factory = grpc.unary_unary_rpc_method_handler
                handler = self._unary(method.name, unary[method.name])
            handlers[method.name] = factory(
                handler,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        return handlers

    def _unary(self, name: str, rpc: _Rpc) -> Handler:
        async def handle(request: Any, context: Any) -> Any:
            rid = _request_id(context)
            token = request_id.set(rid)
            try:
                client = client_address(context.peer())
                metadata = _metadata(context)
                who = await self._check(metadata, name, rpc.model(request), client)
                if not rpc.with_call:
                    return await rpc.call(request)
                call = CallContext(principal=who, request_id=rid, protocol=PROTOCOL, client=client)
                if name == "ModelInfer":  # a canary's sticky key may be in the metadata
                    return await rpc.call(request, call, metadata.get)
                return await rpc.call(request, call)
            except ShipyardError as exc:
                if isinstance(exc, ModelNotFound):  # counted like HTTP's 404s
                    kind = "model" if exc.version is None else "version"
                    self.dataplane.metrics.observe_not_found(kind)
                await abort(context, exc)
            except Exception:
                log.exception("unexpected error in %s/%s", SERVICE, name)
                await abort(context, ShipyardError(_INTERNAL))
            finally:
                request_id.reset(token)

        return handle

    async def _stream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            client = client_address(context.peer())
            async for reply in self.model_stream_infer(requests, _metadata(context), client):
                yield reply
        except ShipyardError as exc:
            await abort(context, exc)

    async def _check(
        self, metadata: Mapping[str, str], method: str, model: str | None, client: str | None
    ) -> str:
        if self.authorize is None:
            return ANONYMOUS
        return await self.authorize(metadata, method, model or None, client=client)


_INTERNAL = "internal server error; see the server log"


async def abort(context: Any, exc: ShipyardError) -> NoReturn:
    """End the call with `exc` as its gRPC status and message (Retry-After when overloaded)."""
    trailing = (("retry-after", str(exc.retry_after)),) if isinstance(exc, Overloaded) else ()
    await context.abort(grpc_status(int(exc.status)), exc.message, trailing)
    raise AssertionError("context.abort returned")  # it always raises


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _request_id(context: Any) -> str:
    current = request_id.get()  # CallGate set it for this call
    if current:
        return current
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:64]
    return _new_request_id()


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _no_model(request: Any) -> str | None:
    return None


def _name(request: Any) -> str | None:
    return str(request.name) or None


def _model_name(request: Any) -> str | None:
    return str(request.model_name) or None
