"""A grpc.aio interceptor that checks each call before its message is read, and logs it.

grpc.aio reads and deserializes a unary call's whole message before it calls the handler,
so a check inside the handler comes after an anonymous caller made the server hold up to
`max_receive_message_length` bytes. `CallGate.intercept_service` runs on the call's
metadata alone; for a call that needs a token (`routes.GRPC_METHODS`) it hands grpc a
stream-unary handler instead, which authenticates (`authenticate(metadata, method=, client=)`) before
it asks for the message: a refused call is answered UNAUTHENTICATED / PERMISSION_DENIED
with its message never read (grpc drops what the flow-control window let in).

The model a call names is inside its message, so this first check is "a valid token that
may do the action on some model"; the servicer checks the exact model once it has the
message (`V2GrpcServicer._check`).

Every call also gets its request id (`x-request-id` metadata, else a new one) and, with
`access_log`, one line on `shipyard.serving.access`: method, model, status code,
duration_ms, peer, request id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc

from shipyard.errors import ShipyardError
from shipyard.serving.logs import request_id
from shipyard.serving.routes import GRPC_METHODS, grpc_access

access_log = logging.getLogger("shipyard.serving.access")


class Authenticate(Protocol):
    """Raises a ShipyardError (401/403/503) when the call's metadata may not make the call."""

    def __call__(
        self, metadata: Mapping[str, str], *, method: str, client: str | None
    ) -> Awaitable[None]: ...


Abort = Callable[[Any, ShipyardError], Awaitable[NoReturn]]


@dataclass
class _Call:
    method: str
    peer: str | None
    started: float
    model: str = ""
    error: BaseException | None = None


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates before the message is read (unary and streaming) and logs every call."""

    def __init__(
        self,
        *,
        abort: Abort,
        authenticate: Authenticate | None = None,
        access_log: bool = False,
    ) -> None:
        self.abort = abort
        self.authenticate = authenticate
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: Any,
    ) -> Any:
        handler = await continuation(details)
        method = str(details.method).rsplit("/", 1)[-1]
        if handler is None or method not in GRPC_METHODS:
            return handler
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        # open methods (health; ModelReady, which checks the model it names after reading)
        check = self.authenticate is not None and grpc_access(method, None) is not None
        if handler.unary_unary is not None:
            if check:
                return grpc.stream_unary_rpc_method_handler(
                    self._gated_unary(handler.unary_unary, method, metadata),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_unary_rpc_method_handler(
                self._logged_unary(handler.unary_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._gated_stream(handler.stream_stream, method, metadata, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    # -- wrapped behaviours ---------------------------------------------------------------

    def _gated_unary(
        self, inner: Any, method: str, metadata: Mapping[str, str]
    ) -> Callable[[AsyncIterator[Any], Any], Awaitable[Any]]:
        async def gated(requests: AsyncIterator[Any], context: Any) -> Any:
            call, token = self._begin(context, method, metadata)
            try:
                await self._authenticate(context, metadata, method, call)
                request = await anext(aiter(requests), None)  # only now is the message read
                if request is None:
                    await self.abort(context, _NoMessage(f"{method} needs one request message"))
                call.model = _model_of(request)
                return await inner(request, context)
            except BaseException as exc:
                call.error = exc
                raise
            finally:
                self._end(context, call, token)

        return gated

    def _logged_unary(
        self, inner: Any, method: str, metadata: Mapping[str, str]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def logged(request: Any, context: Any) -> Any:
            call, token = self._begin(context, method, metadata)
            call.model = _model_of(request)
            try:
                return await inner(request, context)
            except BaseException as exc:
                call.error = exc
                raise
            finally:
                self._end(context, call, token)

        return logged

    def _gated_stream(
        self, inner: Any, method: str, metadata: Mapping[str, str], check: bool
    ) -> Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]]:
        async def gated(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            call, token = self._begin(context, method, metadata)
            try:
                if check:
                    await self._authenticate(context, metadata, method, call)

                async def noted() -> AsyncIterator[Any]:
                    async for request in requests:
                        call.model = call.model or _model_of(request)
                        yield request

                async for reply in inner(noted(), context):
                    yield reply
            except BaseException as exc:
                call.error = exc
                raise
            finally:
                self._end(context, call, token)

        return gated

    # -- per call -------------------------------------------------------------------------

    async def _authenticate(
        self, context: Any, metadata: Mapping[str, str], method: str, call: _Call
    ) -> None:
        if self.authenticate is None:
            return
        try:
            await self.authenticate(metadata, method=method, client=call.peer)
        except ShipyardError as exc:
            await self.abort(context, exc)

    def _begin(self, context: Any, method: str, metadata: Mapping[str, str]) -> tuple[_Call, Any]:
        peer = client_address(context.peer())
        rid = metadata.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        return _Call(method, peer, time.perf_counter()), request_id.set(rid)

    def _end(self, context: Any, call: _Call, token: Any) -> None:
        try:
            if self.access_log:
                code = _code(context, call.error)
                ms = (time.perf_counter() - call.started) * 1000
                access_log.info(
                    "gRPC %s %s %s %.2fms",
                    call.method,
                    call.model or "-",
                    code,
                    ms,
                    extra={
                        "method": call.method,
                        "model": call.model or None,
                        "code": code,
                        "duration_ms": round(ms, 3),
                        "peer": call.peer,
                        "request_id": request_id.get(),
                    },
                )
        finally:
            request_id.reset(token)


class _NoMessage(ShipyardError):
    """A unary call whose client closed without sending its message."""


def client_address(peer: str | None) -> str | None:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1:5000`, `ipv6:[::1]:5000` -> `[::1]:5000`."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    return rest if kind in ("ipv4", "ipv6") and rest else peer


def _code(context: Any, error: BaseException | None) -> str:
    # grpc.aio keeps the code set by abort/set_code; None means the handler returned (OK)
    # or raised past it (grpc answers UNKNOWN; a cancelled call: the client went away).
    code = context.code()
    if code is None:
        if error is None:
            return "OK"
        return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"
    name = getattr(code, "name", None)
    return str(name) if name else str(code)


def _model_of(request: Any) -> str:
    return str(getattr(request, "model_name", "") or getattr(request, "name", "") or "")
