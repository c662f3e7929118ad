"""The Server's lifecycle: start binds gRPC, opens audit, loads models, then answers; stop reverses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import ShipyardError
from shipyard.serving.lifecycle import Server

pytestmark = pytest.mark.anyio


def _record(calls: list[str], server: Server) -> None:
    """Wrap each lifecycle step of `server` so that `calls` lists them as they run."""
    grpc, security, manager = server.grpc, server.security, server.dataplane.manager
    assert grpc is not None

    def async_step(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        async def step(*args: Any) -> Any:
            if label != "grpc.stop" or grpc.port is not None:  # stopping twice is a no-op
                calls.append(label)
            return await inner(*args)

        setattr(owner, name, step)

    def sync_step(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def step(*args: Any) -> Any:
            calls.append(label)
            return inner(*args)

        setattr(owner, name, step)

    for name in ("bind", "start", "stop"):
        async_step(grpc, name, f"grpc.{name}")
    for name in ("start", "stop"):
        async_step(manager, name, f"manager.{name}")
        sync_step(security, name, f"security.{name}")


async def test_start_then_stop_run_their_steps_in_order(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., Any]
) -> None:
    pack()
    server = Server(settings_for(repo, grpc_port=0))
    calls: list[str] = []
    _record(calls, server)
    await server.start()
    assert server.running and server.grpc_port and server.dataplane.ready()
    await server.stop()
    assert not server.running and server.grpc_port is None
    assert calls == [
        "grpc.bind",
        "security.start",
        "manager.start",
        "grpc.start",
        "grpc.stop",
        "manager.stop",
        "security.stop",
    ]
    await server.stop()  # a second stop does nothing
    assert len(calls) == 7


async def test_a_failed_start_stops_what_it_started_and_reports_one_line(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., Any]
) -> None:
    pack()
    server = Server(settings_for(repo, grpc_port=0))
    calls: list[str] = []
    _record(calls, server)

    async def broken() -> None:
        calls.append("manager.start")
        raise OSError(28, "No space left on device", "/models/scale")

    server.dataplane.manager.start = broken  # type: ignore[method-assign]
    exited: list[bool] = []
    server.on_startup_failure = lambda: exited.append(True)
    async with server.app.router.lifespan_context(server.app):
        pass
    assert calls == ["grpc.bind", "security.start", "manager.start", "security.stop", "grpc.stop"]
    assert exited == [True] and not server.running and server.grpc_port is None
    assert isinstance(server.error, ShipyardError)
    assert str(server.error) == "/models/scale: cannot start the server (No space left on device)"
