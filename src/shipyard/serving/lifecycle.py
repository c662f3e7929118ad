"""The `Server`: data plane, security, the HTTP app and the optional gRPC listener, one lifecycle.

`Server(settings)` builds everything that needs no event loop (reading the token and key
files fails here, before any port is bound). `start()` runs on the serving loop, in order:
bind the gRPC port (so a taken port fails before any model loads), open the audit log,
load and warm every model (then `gc.freeze()` for `shipyard serve`), and start answering
gRPC; uvicorn starts listening for HTTP after it. `stop()` does the reverse: gRPC stops
(in-flight calls finish), the models unload (after their in-flight requests), the audit
log is drained and closed. `drain()` before it turns readiness off while requests are still
answered (what `shipyard serve` does on SIGTERM, see `serving.signals`). The HTTP app's
lifespan is `start()`/`stop()`, so uvicorn, a `TestClient` or `httpx.ASGITransport` with
the lifespan run all of it.

HTTP and gRPC are peer transports under it: `http.app.http_app` (every request through the
route table's dispatcher) and `grpc.listener.GrpcServer`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from shipyard.errors import ShipyardError
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.grpc.listener import GrpcServer
from shipyard.serving.http.app import http_app
from shipyard.serving.manager import ModelManager
from shipyard.serving.metrics import Metrics
from shipyard.serving.peers import PeerLink
from shipyard.serving.repository import ModelRepository
from shipyard.serving.security import ServerSecurity, build_security
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.server")


class StartupError(ShipyardError):
    """The server cannot start: a port is taken, a file is missing or unreadable."""


def build_dataplane(settings: ServerSettings) -> DataPlane:
    """A data plane over a fresh manager and metrics registry for `settings.repository`."""
    metrics = Metrics()
    kek = None
    if settings.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(settings.key_file)  # read once; a bad key file fails before serving
    manager = ModelManager(repository_for(settings), settings=settings, metrics=metrics, kek=kek)
    return DataPlane(manager, metrics)


def repository_for(settings: ServerSettings) -> ModelRepository:
    """The repository to serve: a local folder, or an s3:// URL's local mirror."""
    location = settings.repository
    if isinstance(location, str):
        from shipyard.serving.remote_repository import RemoteRepository

        return RemoteRepository(location, cache_root=settings.repository_cache)
    return ModelRepository(location)


class Server:
    """One server: its data plane, security, HTTP app and (with `grpc_port`) gRPC listener.

    `freeze_gc` (what `shipyard serve` uses; off for servers inside another process, such
    as tests) moves every object alive once the models are loaded out of the garbage
    collector's reach (`gc.freeze()`): the libraries and models make a heap of a few hundred
    thousand objects, and without it every full collection walks all of them, a 20-30 ms
    stall of the event loop that a busy server hits several times a second and that every
    in-flight request pays (measured: p99 30 ms against p50 4.6 ms).

    `on_startup_failure`, when set, makes a failing start-up (in the app's lifespan) keep
    its cause in `error` as one `ShipyardError` line and call it (uvicorn is then told to
    exit) instead of raising; `serve()` and `start_in_thread()` use it.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        dataplane: DataPlane | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.settings = settings
        self.dataplane = dataplane or build_dataplane(settings)
        self.security: ServerSecurity = build_security(settings, self.dataplane)
        self.freeze_gc = freeze_gc
        self.grpc: GrpcServer | None = None
        if settings.grpc_port is not None:
            self.grpc = GrpcServer(
                self.dataplane,
                settings=settings,
                authorize=self.security.authorize,
                authenticate=self.security.authenticate,
                grace_s=settings.drain_timeout_s,
            )
        self.app = http_app(self.dataplane, self.security, settings, lifespan=self._lifespan)
        self.on_startup_failure: Callable[[], None] | None = None
        self.error: ShipyardError | None = None
        """Why start-up failed (with `on_startup_failure` set)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop the server runs on, once started (SIGHUP reloads are sent to it)."""
        self.running = False
        """True between start-up (models loaded) and shutdown."""
        self.peers: PeerLink | None = None
        """Under `--workers N`: the link to the supervisor and the other workers."""
        self._stack: AsyncExitStack | None = None

    @property
    def grpc_port(self) -> int | None:
        """The bound V2 gRPC port while it runs; None when gRPC is off or stopped."""
        return None if self.grpc is None else self.grpc.port

    async def start(self) -> None:
        """Bind gRPC, open the audit log, load every model, then answer gRPC.

        On a failure what already started is stopped again and the error raised.
        """
        self.loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            if self.grpc is not None:
                await self.grpc.bind()
                stack.push_async_callback(self.grpc.stop)
            self.security.start()
            stack.push_async_callback(asyncio.to_thread, self.security.stop)  # drains audit
            await self.dataplane.manager.start()
            stack.push_async_callback(self.dataplane.manager.stop)
            if self.freeze_gc:
                gc.collect()
                gc.freeze()
            if self.grpc is not None:
                await self.grpc.start()
            if self.peers is not None:
                await self.peers.start(self)
                stack.callback(self.peers.close)
            self._stack = stack.pop_all()
        self.running = True

    def drain(self) -> None:
        """Readiness answers not ready from now on (server and models); requests are still
        answered until the listeners close."""
        self.dataplane.drain()

    def close_grpc(self) -> None:
        """Start stopping gRPC now (new calls refused, in-flight ones get the drain timeout),
        beside the HTTP listener's own drain; `stop()` waits for it."""
        if self.grpc is not None:
            self.grpc.begin_stop()

    async def stop(self) -> None:
        """Stop gRPC (in-flight calls finish), unload every model, close the audit log."""
        self.running = False
        self.drain()
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self.grpc is not None:
            await self.grpc.stop()  # listeners first; the stack then unwinds the rest
        try:
            await stack.aclose()
        finally:
            self.dataplane.metrics.refresh()  # the last requests' series, into the files
            if self.settings.ray is not None:  # models unloaded: leave (or stop) the cluster
                from shipyard.serving import ray_pool

                await asyncio.to_thread(ray_pool.shutdown)

    async def reload(self) -> None:
        """What SIGHUP does: rescan the repository, re-read the token file, log and audit it."""
        log.info("SIGHUP received: rescanning the repository and re-reading the token file")
        started = time.perf_counter()
        plane, security = self.dataplane, self.security
        await plane.manager.refresh()
        tokens = "no token file"
        if security.guard is not None:
            try:
                count = len(await asyncio.to_thread(security.guard.tokens.list))
                tokens = f"{count} tokens"
            except ShipyardError as exc:
                tokens = "token file unreadable"
                log.error("SIGHUP: cannot re-read the token file: %s", exc)
        models = len(await plane.manager.index())
        ms = (time.perf_counter() - started) * 1000
        log.info("reloaded on SIGHUP in %.0f ms: %d models, %s", ms, models, tokens)
        if security.audit is not None:
            from shipyard.serving.calls import SERVER

            security.audit.submit(
                "server.reload", who=SERVER, detail=f"SIGHUP: {models} models, {tokens}"
            )

    @asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        try:
            await self.start()
        except Exception as exc:
            if self.on_startup_failure is None:
                raise
            # uvicorn would log the traceback; one line in `error` is what the caller raises
            self.error = startup_error(exc)
            self.on_startup_failure()
            yield
            return
        try:
            yield
        finally:
            await self.stop()


def startup_error(exc: Exception) -> ShipyardError:
    """A start-up failure as one ShipyardError line (an unexpected one is logged in full)."""
    if isinstance(exc, ShipyardError):
        return exc
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return StartupError(f"{where}cannot start the server ({exc.strerror or exc})")
    log.error("unexpected error while starting", exc_info=exc)
    return StartupError(f"cannot start the server ({type(exc).__name__}: {exc}); see the log")
