"""Run the server: `serve()` blocks (the CLI's `shipyard serve`); `start_in_thread()` for tests.

Both run uvicorn with uvloop and httptools when installed. `start_in_thread` binds the
configured port (0 = a free one), waits until models are loaded and the socket listens,
and returns a handle with the real port; use it as a context manager so it always stops.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from shipyard.errors import ShipyardError
from shipyard.serving.app import build_app
from shipyard.serving.logs import configure_logging
from shipyard.serving.security import check_exposure
from shipyard.serving.settings import ServerSettings, check_repository, load_settings

_GRACE_S = 10
"""Seconds in-flight HTTP requests and gRPC calls get to finish when the server stops."""


def serve(repository: str | Path | None = None, *, settings: ServerSettings | None = None) -> None:
    """Serve `repository` (or settings.repository) until interrupted; logs go to stderr."""
    settings = _with_repository(settings or load_settings(), repository)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    uvicorn.Server(_uvicorn_config(settings, freeze_gc=True)).run()


class RunningServer:
    """A server running on a background thread; `.url` is e.g. http://127.0.0.1:41234."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        host: str,
        port: int,
        *,
        scheme: str = "http",
    ) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.scheme = scheme

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def grpc_port(self) -> int | None:
        """The bound V2 gRPC port while it runs; None when gRPC is off (no grpc_port set)."""
        port = getattr(self.app.state, "grpc_port", None)
        return port if isinstance(port, int) else None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def app(self) -> Any:
        return self._server.config.app

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask uvicorn to exit (in-flight requests finish, models unload) and wait for it."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    repository: str | Path | None = None,
    *,
    settings: ServerSettings | None = None,
    timeout_s: float = 60.0,
) -> RunningServer:
    """Start serving on a daemon thread; returns once listening (models loaded)."""
    settings = _with_repository(settings or load_settings(port=0), repository)
    server = uvicorn.Server(_uvicorn_config(settings))
    thread = threading.Thread(target=server.run, name="shipyard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise ShipyardError(
                f"server failed to start on {settings.host}:{settings.port} (port in use? "
                "see the log for the cause)"
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise ShipyardError(f"server did not start within {timeout_s:.0f} s")
        time.sleep(0.01)
    sockets = [s for srv in server.servers for s in srv.sockets]
    port = sockets[0].getsockname()[1] if sockets else settings.port
    scheme = "https" if settings.tls_cert else "http"
    return RunningServer(server, thread, settings.host, port, scheme=scheme)


def _with_repository(settings: ServerSettings, repository: str | Path | None) -> ServerSettings:
    if repository is None:
        return settings
    return settings.model_copy(update={"repository": Path(repository)})


def _uvicorn_config(settings: ServerSettings, *, freeze_gc: bool = False) -> uvicorn.Config:
    check_exposure(settings)
    check_repository(settings)
    app = build_app(settings, freeze_gc=freeze_gc)
    if settings.grpc_port is not None:
        from shipyard.serving.protocols import v2_grpc

        v2_grpc.attach(
            app,
            app.state.dataplane,
            settings=settings,
            authorize=app.state.security.authorize,
            grace_s=_GRACE_S,
        )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=_GRACE_S,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
