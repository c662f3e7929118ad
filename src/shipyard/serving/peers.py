"""A worker's link to its supervisor and, through it, to the other workers (`--workers N`).

One socket pair per worker carries JSON lines: the worker says `ready` once its models are
loaded and `broadcast`s what changed the repository's state by request (a load or unload
through the repository API) or by a rollout decision; the supervisor passes each broadcast
to the other workers as `peer`, and they apply it as if it had happened to them (a load or
unload of that model; the same decision for the same rollout, with trigger `peer`). The
link closing means the supervisor is gone: the worker drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.serving.lifecycle import Server

log = logging.getLogger("shipyard.serving.workers")

INDEX_ENV = "SHIPYARD_WORKER_INDEX"
REFRESH_S = 1.0
"""How often a worker writes its computed gauges (queue depth, audit health)."""


def current_worker() -> int | None:
    """This process's worker number (1-based) under `--workers N`, else None."""
    raw = os.environ.get(INDEX_ENV)
    return int(raw) + 1 if raw is not None and raw.isdigit() else None


class PeerLink:
    """The worker's end of its socket pair."""

    def __init__(self, fd: int, index: int) -> None:
        self.index = index
        self._sock = socket.socket(fileno=fd)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self, server: Server) -> None:
        """Models are loaded: connect, hook the data plane's changes, say `ready`."""
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        plane = server.dataplane
        plane.on_repository_change.append(self._repository_changed)
        plane.manager.steering.on_decision.append(self._decided)
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read(server, reader), name="peer-link")
        self._refresher = loop.create_task(self._refresh(server), name="metrics-refresh")
        self._send({"op": "ready", "worker": self.index + 1})

    def close(self) -> None:
        self._closing = True
        for task in (self._reader_task, self._refresher):
            if task is not None:
                task.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()

    async def _refresh(self, server: Server) -> None:
        """Gauges a function computes, written for the other workers' scrapes."""
        metrics, drift = server.dataplane.metrics, server.dataplane.manager.drift
        while True:
            metrics.refresh()
            drift.share()
            await asyncio.sleep(REFRESH_S)

    # -- out ----------------------------------------------------------------------------------

    def _repository_changed(self, action: str, model: str) -> None:
        self._send({"op": "broadcast", "message": {"kind": action, "model": model}})

    def _decided(self, model: str, candidate: int, action: str, reason: str) -> None:
        message = {
            "kind": "rollout",
            "model": model,
            "candidate": candidate,
            "action": action,
            "reason": f"worker {self.index + 1}: {reason}",
        }
        self._send({"op": "broadcast", "message": message})

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(json.dumps(message).encode() + b"\n")

    # -- in -----------------------------------------------------------------------------------

    async def _read(self, server: Server, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("op") == "peer" and isinstance(message.get("message"), dict):
                    await self._apply(server, message["message"])
        if not self._closing and not server.dataplane.draining:  # the supervisor is gone
            log.error("the supervisor is gone; draining this worker")
            os.kill(os.getpid(), signal.SIGTERM)

    async def _apply(self, server: Server, message: dict[str, Any]) -> None:
        manager = server.dataplane.manager
        kind, model = message.get("kind"), str(message.get("model", ""))
        try:
            if kind == "load":
                await manager.load(model)
            elif kind == "unload":
                await manager.unload(model)
            elif kind == "rollout":
                manager.router.adopt(
                    model,
                    str(message.get("action")),
                    int(message.get("candidate", 0)),
                    str(message.get("reason", "")),
                )
        except Exception as exc:  # a peer's change that fails here is logged, not fatal
            log.warning("could not apply a peer's %s of %s: %s", kind, model, exc)
