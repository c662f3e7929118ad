"""Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService` on grpc.aio.

A thin transport like `v2_http`: each RPC decodes its message (`grpc_codec`), calls the
shared `DataPlane` and encodes the answer. It runs on the same event loop as uvicorn:
`attach` wraps the Starlette lifespan so the gRPC server starts once the models are
loaded and stops (in-flight RPCs finish within the grace period) before they unload.

Errors: a `ShipyardError` becomes the gRPC status of its HTTP status (`grpc_status`) with
its message; anything else is logged and answered INTERNAL. `ModelStreamInfer` answers
each request on the stream as it completes (several run at once, up to `STREAM_WINDOW`),
a failed one as `error_message`, like Triton.

Authentication: `serve_grpc(authenticate=...)` runs in `grpc_gate.CallGate`, an interceptor,
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
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn, Protocol

import grpc
from starlette.applications import Starlette

from shipyard.errors import ShipyardError
from shipyard.serving.calls import ANONYMOUS, CallContext
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ModelNotFound, Overloaded
from shipyard.serving.limits import decode_limits
from shipyard.serving.logs import request_id
from shipyard.serving.protocols import grpc_codec
from shipyard.serving.protocols.grpc_gate import Authenticate, CallGate, client_address
from shipyard.serving.protocols.proto import grpc_service_pb2 as pb
from shipyard.serving.settings import ServerSettings
from shipyard.serving.tls import ServerTls

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
        self, request: pb.ModelInferRequest, call: CallContext | None = None
    ) -> pb.ModelInferResponse:
        received = time.perf_counter_ns()
        limits = decode_limits(self.dataplane.limits_for(request.model_name))
        decoded = grpc_codec.decode_infer_request(request, limits=limits)
        response = await self.dataplane.infer(
            request.model_name,
            decoded,
            version=request.model_version or None,
            protocol=PROTOCOL,
            received_ns=received,
            call=call,
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
                infer_response = await self.model_infer(request, call)
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
                who = await self._check(_metadata(context), name, rpc.model(request), client)
                if not rpc.with_call:
                    return await rpc.call(request)
                call = CallContext(principal=who, request_id=rid, protocol=PROTOCOL, client=client)
                return await rpc.call(request, call)
            except ShipyardError as exc:
                if isinstance(exc, ModelNotFound):  # counted like HTTP's 404s
                    kind = "model" if exc.version is None else "version"
                    self.dataplane.metrics.observe_not_found(kind)
                await _abort(context, exc)
            except Exception:
                log.exception("unexpected error in %s/%s", SERVICE, name)
                await _abort(context, ShipyardError(_INTERNAL))
            finally:
                request_id.reset(token)

        return handle

    async def _stream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            client = client_address(context.peer())
            async for reply in self.model_stream_infer(requests, _metadata(context), client):
                yield reply
        except ShipyardError as exc:
            await _abort(context, exc)

    async def _check(
        self, metadata: Mapping[str, str], method: str, model: str | None, client: str | None
    ) -> str:
        if self.authorize is None:
            return ANONYMOUS
        return await self.authorize(metadata, method, model or None, client=client)


@asynccontextmanager
async def serve_grpc(
    dataplane: DataPlane,
    *,
    settings: ServerSettings,
    authorize: Authorize | None = None,
    authenticate: Authenticate | None = None,
    grace_s: float = 10.0,
) -> AsyncIterator[int]:
    """Serve V2 gRPC on settings.host:settings.grpc_port (0 = a free port); yields the port.

    `authenticate` runs before a call's message is read (`grpc_gate.CallGate`), `authorize`
    once the model it names is known. With settings.tls_cert/tls_key it serves TLS from the
    same files as HTTPS (`ServerTls`: client certificates, reload).
    """
    port = settings.grpc_port or 0
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    check_port_free(settings.host, port)  # before grpc's core logs its own bind failure
    tls = ServerTls.from_settings(settings)
    servicer = V2GrpcServicer(dataplane, authorize=authorize)
    gate = CallGate(
        abort=_abort,
        authenticate=authenticate,
        access_log=settings.access_log,
    )
    server = grpc.aio.server(
        interceptors=(gate,),
        options=[
            # messages beyond the body limit are refused by grpc as they arrive; a call that
            # needs a token is refused before its message is read at all (CallGate)
            ("grpc.max_receive_message_length", settings.limits.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared
            ("grpc.max_concurrent_streams", settings.grpc.max_concurrent_streams),
            ("grpc.http2.max_ping_strikes", 2),  # then GOAWAY: no ping floods
            # fixed 64 KiB windows: what a refused call buffers stays small (settings.grpc)
            ("grpc.http2.bdp_probe", int(settings.grpc.bdp_probe)),
        ],
        maximum_concurrent_rpcs=settings.grpc.max_concurrent_rpcs,
    )
    handlers = servicer.method_handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    address = f"{host}:{port}"
    try:
        if tls is not None:
            bound = server.add_secure_port(address, tls.grpc_credentials())
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.60 raises; older ones return 0
        bound = 0
    if not bound:
        await server.stop(None)
        raise ShipyardError(
            f"cannot listen for gRPC on {address} (port in use, or not a local address); "
            "pick another with --grpc-port or SHIPYARD_GRPC_PORT"
        )
    await server.start()
    mode = "" if tls is None else " (mutual TLS)" if tls.client_ca else " (TLS)"
    log.info("V2 gRPC%s listening on %s:%d", mode, settings.host, bound)
    if tls is not None and tls.min_version != "1.2":
        log.warning("gRPC accepts TLS 1.2 too: grpcio has no minimum-version option")
    try:
        yield bound
    finally:
        await server.stop(grace_s)


def attach(
    app: Starlette,
    dataplane: DataPlane,
    *,
    settings: ServerSettings,
    authorize: Authorize | None = None,
    authenticate: Authenticate | None = None,
    grace_s: float = 10.0,
) -> None:
    """Run V2 gRPC inside `app`'s lifespan when settings.grpc_port is set.

    It starts after the app's startup (models loaded) and stops before its shutdown;
    `app.state.grpc_port` holds the bound port while it runs. A port already taken fails
    here, before anything starts, with a one-line ShipyardError naming it.
    """
    if settings.grpc_port is None:
        return
    check_port_free(settings.host, settings.grpc_port)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        async with (
            inner(app) as state,
            serve_grpc(
                dataplane,
                settings=settings,
                authorize=authorize,
                authenticate=authenticate,
                grace_s=grace_s,
            ) as port,
        ):
            app.state.grpc_port = port
            try:
                yield state
            finally:
                app.state.grpc_port = None

    app.router.lifespan_context = lifespan


_INTERNAL = "internal server error; see the server log"


def check_port_free(host: str, port: int) -> None:
    """ShipyardError naming host:port when it cannot be bound now (taken, or not local).

    grpc's own bind failure only surfaces inside the app's startup, as a traceback after
    the models loaded; this check says it in one line first (a race only brings that back).
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ShipyardError(f"cannot listen for gRPC on {host}:{port}: {exc.strerror}") from None
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
            try:
                probe.bind(address)
            except OSError as exc:
                errors.append(exc)
    if errors and len(errors) == len(infos):  # grpc serves when any one address binds
        raise ShipyardError(
            f"cannot listen for gRPC on {host}:{port}: {errors[0].strerror or errors[0]}; "
            "pick another port with --grpc-port or SHIPYARD_GRPC_PORT"
        )


async def _abort(context: Any, exc: ShipyardError) -> NoReturn:
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
