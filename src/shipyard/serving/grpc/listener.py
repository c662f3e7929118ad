"""The V2 gRPC listener: a grpc.aio server for `V2GrpcServicer`, a peer of the HTTP listener.

`GrpcServer.bind()` checks and binds the port (first thing at start-up, so a taken port
fails before any model loads), `start()` begins answering once the models are loaded, and
`stop()` lets in-flight calls finish within the grace period (`begin_stop()` starts it
without waiting, for a drain). `serving.lifecycle.Server` calls them in that order on
uvicorn's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import grpc

from shipyard.errors import ShipyardError
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.grpc.gate import Authenticate, CallGate
from shipyard.serving.grpc.v2 import SERVICE, Authorize, V2GrpcServicer, abort
from shipyard.serving.settings import ServerSettings
from shipyard.serving.tls import ServerTls

log = logging.getLogger("shipyard.serving.grpc")


class GrpcServer:
    """Serves V2 gRPC on settings.host:settings.grpc_port (0 = a free port).

    `authenticate` runs before a call's message is read (`gate.CallGate`), `authorize`
    once the model it names is known. With settings.tls_cert/tls_key it serves TLS from the
    same files as HTTPS (`ServerTls`: client certificates, reload).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        settings: ServerSettings,
        authorize: Authorize | None = None,
        authenticate: Authenticate | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.authorize = authorize
        self.authenticate = authenticate
        self.grace_s = grace_s
        self.port: int | None = None
        """The bound port while bound (None before `bind` and after `stop`)."""
        self._server: Any = None
        self._tls: ServerTls | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def bind(self) -> int:
        """Build the grpc server and bind its port (not answering yet); returns the port."""
        settings = self.settings
        port = settings.grpc_port or 0
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        group = settings.workers > 1  # a worker: the supervisor reserved the port for its group
        if not group:
            check_port_free(settings.host, port)  # before grpc's core logs its own bind failure
        self._tls = tls = ServerTls.from_settings(settings)
        servicer = V2GrpcServicer(self.dataplane, authorize=self.authorize)
        gate = CallGate(
            abort=abort,
            authenticate=self.authenticate,
            access_log=settings.access_log,
        )
        server = grpc.aio.server(
            interceptors=(gate,),
            options=[
                # messages beyond the body limit are refused by grpc as they arrive; a call that
                # needs a token is refused before its message is read at all (CallGate)
                ("grpc.max_receive_message_length", settings.limits.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # a port in use must fail, not be shared, unless the group is ours (workers)
                ("grpc.so_reuseport", int(group)),
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
        self._server, self.port, self._stopping = server, int(bound), None
        return self.port

    async def start(self) -> None:
        """Answer calls on the bound port (`bind` first)."""
        if self._server is None:
            raise RuntimeError("GrpcServer.start() before bind()")
        await self._server.start()
        tls = self._tls
        mode = "" if tls is None else " (mutual TLS)" if tls.client_ca else " (TLS)"
        log.info("V2 gRPC%s listening on %s:%d", mode, self.settings.host, self.port)
        if tls is not None and tls.min_version != "1.2":
            log.warning("gRPC accepts TLS 1.2 too: grpcio has no minimum-version option")

    def begin_stop(self) -> None:
        """Start `stop()` without waiting for it (a draining server closes gRPC beside HTTP)."""
        server, self._server, self.port = self._server, None, None
        if server is not None:
            self._stopping = asyncio.ensure_future(server.stop(self.grace_s))

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish within `grace_s`, free the port
        (or wait for the stop `begin_stop` started)."""
        self.begin_stop()
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    async def __aenter__(self) -> int:
        port = await self.bind()
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return port

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


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
