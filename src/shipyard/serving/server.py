"""Run the server: `serve()` blocks (the CLI's `shipyard serve`); `start_in_thread()` for tests.

Both run uvicorn with uvloop and httptools when installed, behind the connection bounds of
`http.guard` (header size, header and body timeouts, connection cap). Start-up checks what it
can before any model loads, in this order: the repository, exposure, TLS files, the audit
folder, token and key files (building the `Server`), the HTTP port (bound here), then the
gRPC port (bound first thing in `Server.start()`); only then do models load. Each failure is
one `StartupError` line naming the file or port.

`serve()` also owns the signals (`serving.signals`): SIGHUP reloads (the repository is
rescanned and the token file re-read); SIGTERM or SIGINT drains (readiness off, requests
answered for `shutdown_delay_s`, listeners closed, in-flight work finished within
`drain_timeout_s`) and returns, so the process exits 0.

`start_in_thread` binds the configured port (0 = a free one), waits until models are loaded
and the socket listens, and returns a handle with the real port; use it as a context manager
so it always stops.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from shipyard.package.remote import repository_location
from shipyard.serving.addresses import is_loopback
from shipyard.serving.arrivals import Arrivals
from shipyard.serving.http.app import HttpApp
from shipyard.serving.http.balance import ConnectionShares
from shipyard.serving.lifecycle import Server, StartupError
from shipyard.serving.logs import configure_logging
from shipyard.serving.peers import PeerLink
from shipyard.serving.security import check_exposure
from shipyard.serving.settings import ServerSettings, check_repository, load_settings
from shipyard.serving.signals import QuietUvicorn, draining_signals, sighup_reloads
from shipyard.serving.tls import http_ssl_factory

log = logging.getLogger("shipyard.serving.server")


def serve(
    repository: str | Path | None = None,
    *,
    settings: ServerSettings | None = None,
    link: PeerLink | None = None,
) -> None:
    """Serve `repository` (or settings.repository) until interrupted; logs go to stderr.

    With `settings.workers` above 1 this process supervises that many workers instead
    (`serving.workers`); `link` is given to each of them (`serving.worker_main`)."""
    settings = _with_repository(settings or load_settings(), repository)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    if settings.workers > 1 and link is None:
        from shipyard.serving.workers import serve_workers, worker_audit_log

        first = settings.audit_log and worker_audit_log(settings.audit_log, 0)
        _checks(settings.model_copy(update={"audit_log": first or None}))
        if serve_workers(settings) != 0:
            raise StartupError("the workers stopped with an error; see their log lines above")
        return
    shares = None
    if link is not None and settings.http.balance:
        from shipyard.serving.http.balance import group_shares

        shares = group_shares(link.index)
    prepared = _prepare(settings, freeze_gc=True, shares=shares)
    prepared.server.peers = link
    grpc = "" if settings.grpc_port is None else f", V2 gRPC on port {settings.grpc_port}"
    worker = "" if link is None else f" as worker {link.index + 1} of {settings.workers}"
    log.info(
        "serving %s on %s%s (V2: /v2, metrics: /metrics%s); Ctrl-C to stop",
        settings.repository,
        prepared.url,
        worker,
        grpc,
    )
    with sighup_reloads(prepared.server), draining_signals(prepared.server, prepared.listener):
        prepared.listener.run(sockets=[prepared.sock])
    if prepared.server.error is not None:
        raise prepared.server.error


class RunningServer:
    """A server running on a background thread; `.url` is e.g. http://127.0.0.1:41234."""

    def __init__(
        self,
        server: Server,
        listener: uvicorn.Server,
        thread: threading.Thread,
        host: str,
        port: int,
        *,
        scheme: str = "http",
    ) -> None:
        self.server = server
        """The `Server` (data plane, security, HTTP app, gRPC listener) being run."""
        self._listener = listener
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
        return self.server.grpc_port

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def app(self) -> Any:
        return self.server.app

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask uvicorn to exit (in-flight requests finish, models unload) and wait for it."""
        self._listener.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._listener.force_exit = True
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
    prepared = _prepare(settings)
    server, listener = prepared.server, prepared.listener
    thread = threading.Thread(
        target=listener.run,
        kwargs={"sockets": [prepared.sock]},
        name="shipyard-server",
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not listener.started or server.error is not None:
        if server.error is not None or not thread.is_alive():
            thread.join(timeout_s)
            raise server.error or StartupError(
                f"server failed to start on {prepared.url}; see the log for the cause"
            )
        if time.monotonic() > deadline:
            listener.should_exit = True
            thread.join(5)
            raise StartupError(f"server did not start within {timeout_s:.0f} s")
        time.sleep(0.01)
    return RunningServer(
        server, listener, thread, settings.host, prepared.port, scheme=prepared.scheme
    )


def _with_repository(settings: ServerSettings, repository: str | Path | None) -> ServerSettings:
    if repository is None:
        return settings
    return settings.model_copy(update={"repository": repository_location(str(repository))})


@dataclass
class _Prepared:
    server: Server
    listener: uvicorn.Server
    sock: socket.socket
    scheme: str
    host: str

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _checks(settings: ServerSettings) -> None:
    """The start-up checks that need neither a server nor a port, in order."""
    check_repository(settings)
    check_exposure(settings)
    warning = exposure_warning(settings)
    if warning is not None:
        log.warning(warning)
    _check_tls_files(settings)
    _check_audit_log(settings)


def _prepare(
    settings: ServerSettings, *, freeze_gc: bool = False, shares: ConnectionShares | None = None
) -> _Prepared:
    """Every start-up check that needs no event loop, then the bound (not yet listening) socket.

    `shares`: a worker's view of its group's connection counts (`http.balance`)."""
    _checks(settings)
    server = Server(settings, freeze_gc=freeze_gc)
    config = _uvicorn_config(server.app, settings, shares, server.dataplane.manager.arrivals)
    _load_config(config, settings)
    sock = _bind(settings)
    listener = QuietUvicorn(config)
    listener.shares = shares

    def exit_uvicorn() -> None:
        listener.should_exit = True

    server.on_startup_failure = exit_uvicorn
    scheme = "https" if settings.tls_cert else "http"
    return _Prepared(server, listener, sock, scheme, settings.host)


def _uvicorn_config(
    app: HttpApp,
    settings: ServerSettings,
    shares: ConnectionShares | None = None,
    arrivals: Arrivals | None = None,
) -> uvicorn.Config:
    limits = settings.http
    http: Any
    if importlib.util.find_spec("httptools"):
        from shipyard.serving.http.guard import guarded_protocol

        # behind trusted proxies uvicorn wraps the app to rewrite the client: no direct path
        direct = None if limits.trusted_proxies else app.direct
        http = guarded_protocol(limits, shares, direct, arrivals)
    else:  # h11 bounds header size itself; it has no header or body timeout
        http = "h11"
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http,
        lifespan="on",
        ws="none",  # a WebSocket upgrade is a plain HTTP request (no route serves one)
        # X-Forwarded-For/-Proto believed only from the proxies named (uvicorn trusts
        # 127.0.0.1 by default, so any local client could pick its audited address)
        proxy_headers=bool(limits.trusted_proxies),
        forwarded_allow_ips=list(limits.trusted_proxies) or None,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),  # whole seconds
        timeout_keep_alive=int(max(1, round(limits.keep_alive_timeout_s))),
        backlog=limits.backlog,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        # TLS: the one place the server's certificate and key are handed to uvicorn.
        ssl_context_factory=http_ssl_factory(settings),
    )


# -- start-up checks -----------------------------------------------------------------------


def exposure_warning(settings: ServerSettings) -> str | None:
    """The warning for tokens sent in clear text: a non-loopback bind with auth but no TLS."""
    if settings.auth is None or settings.tls_cert is not None or is_loopback(settings.host):
        return None
    return (
        f"serving {settings.host or 'all interfaces'}:{settings.port} with --auth but without "
        "TLS: tokens travel in clear text; put TLS on (--tls-cert/--tls-key) or a TLS proxy "
        "in front"
    )


def _check_tls_files(settings: ServerSettings) -> None:
    for path, what, flag in (
        (settings.tls_cert, "TLS certificate", "--tls-cert"),
        (settings.tls_key, "TLS private key", "--tls-key"),
    ):
        if path is not None and not path.is_file():
            raise StartupError(
                f"{path}: {what} file not found; pass an existing PEM file to {flag}"
            )


def _load_config(config: uvicorn.Config, settings: ServerSettings) -> None:
    """uvicorn's own set-up (the TLS context among it), with its errors as one line."""
    try:
        config.load()
    except (ssl.SSLError, OSError, ValueError) as exc:
        if settings.tls_cert is None:
            raise
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise StartupError(
            f"{settings.tls_cert}, {settings.tls_key}: cannot load the TLS certificate and key "
            f"({reason}); pass a PEM certificate and its matching unencrypted private key"
        ) from None


def _check_audit_log(settings: ServerSettings) -> None:
    path = settings.audit_log
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):  # creates it as the audit log would; appends nothing
            pass
    except OSError as exc:
        raise StartupError(
            f"{path}: cannot write the audit log ({exc.strerror or exc}); make the folder "
            "writable or pass another --audit-log"
        ) from None


def _bind(settings: ServerSettings) -> socket.socket:
    """The HTTP socket, bound before any model loads so a taken port fails at once."""
    host, port = settings.host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart past TIME_WAIT
    if settings.workers > 1:  # a worker: its group's port, reserved by the supervisor
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is in use; stop the other server or pass --port"
            ) from None
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --host or --port"
        ) from None
    sock.set_inheritable(True)
    return sock
