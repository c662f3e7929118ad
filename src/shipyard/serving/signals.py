"""What signals do to `shipyard serve`: SIGHUP reloads; SIGTERM or SIGINT drains, then stops.

The first SIGTERM or SIGINT turns readiness off at once (`/v2/health/ready` 503, gRPC
ServerReady and every model's ready false; liveness stays 200) and is logged with the
requests in flight. Requests are answered for `shutdown_delay_s` more (a load balancer, such
as Kubernetes' endpoints, takes that long to stop sending traffic), then both listeners close
(new connections are refused), in-flight HTTP requests and gRPC calls get `drain_timeout_s`
to finish, the models unload and the audit log is flushed: `serve()` returns and the process
exits 0. A second signal exits at once, killed by it (status 128 + its number).

uvicorn's own handling of these signals (finish, then re-raise the signal: status 143 after
a plain SIGTERM) is turned off by `QuietUvicorn`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from shipyard.serving.http.balance import ConnectionShares
from shipyard.serving.lifecycle import Server

log = logging.getLogger("shipyard.serving.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class QuietUvicorn(uvicorn.Server):
    """uvicorn without its own SIGINT/SIGTERM handlers: `draining_signals` owns them.

    Under `--workers` it also tells the group when this worker starts and stops accepting
    connections (`shares`, `http.balance`)."""

    shares: ConnectionShares | None = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.shares is not None:
            self.shares.start_listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.shares is not None:
            self.shares.stop_listening()
        await super().shutdown(sockets=sockets)


@contextmanager
def draining_signals(server: Server, listener: uvicorn.Server) -> Iterator[None]:
    """While serving (main thread), SIGTERM/SIGINT drain `server` and stop `listener`;
    a second one exits the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    def start_drain(name: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(_drain(server, listener, name)))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            try:
                log.error(
                    "%s received again while shutting down: exiting now (in-flight requests: %d)",
                    name,
                    server.dataplane.in_flight(),
                )
            finally:  # nothing may keep the process from going
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        received.append(signum)
        server.drain()  # readiness is off from this instant, whatever the loop is doing
        loop = server.loop
        if loop is None or not server.running or loop.is_closed():
            log.warning(
                "%s received while starting: stopping once the models are loaded (send it "
                "again to exit at once)",
                name,
            )
            listener.should_exit = True
            return
        loop.call_soon_threadsafe(start_drain, name)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(_no_cut_tracebacks)
    try:
        yield
    finally:
        uvicorn_log.removeFilter(_no_cut_tracebacks)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _no_cut_tracebacks(record: logging.LogRecord) -> bool:
    """Drop uvicorn's traceback for each request the drain timeout cancels: `_drain` logs
    their count in one line (uvicorn cancels request tasks only then)."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, asyncio.CancelledError)


async def _drain(server: Server, listener: uvicorn.Server, name: str) -> None:
    """Answer for the shutdown delay, then close both listeners; report what the drain cut."""
    delay, timeout = server.settings.shutdown_delay_s, server.settings.drain_timeout_s
    log.warning(
        "%s received: shutting down (in-flight requests: %d); readiness answers 503, "
        "requests are answered for %g s more (--shutdown-delay), then the listeners close "
        "and in-flight requests get %g s to finish (--drain-timeout); send %s again to exit "
        "at once",
        name,
        server.dataplane.in_flight(),
        delay,
        timeout,
        name,
    )
    await asyncio.sleep(delay)
    log.info("closing the listeners (in-flight requests: %d)", server.dataplane.in_flight())
    server.close_grpc()
    listener.should_exit = True  # uvicorn closes its socket, then waits for its connections
    await asyncio.sleep(timeout)
    left = server.dataplane.in_flight()
    if left:
        log.error(
            "drain timeout of %g s (--drain-timeout) passed: cutting the in-flight requests (%d)",
            timeout,
            left,
        )


@contextmanager
def sighup_reloads(server: Server) -> Iterator[None]:
    """While serving, SIGHUP rescans the repository and re-reads the token file (main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    reloading: asyncio.Task[None] | None = None

    def start_reload() -> None:
        nonlocal reloading
        if reloading is not None and not reloading.done():
            log.info("SIGHUP received during a reload: the running reload covers it")
            return
        reloading = asyncio.get_running_loop().create_task(server.reload(), name="sighup-reload")

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        loop = server.loop
        if loop is None or not server.running or loop.is_closed():
            log.info("SIGHUP received while starting or stopping: ignored")
            return
        loop.call_soon_threadsafe(start_reload)

    previous = signal.signal(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
