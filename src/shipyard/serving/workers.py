"""`shipyard serve --workers N`: N server processes on one port, and the supervisor above them.

The supervisor (the process `shipyard serve` started) checks what it can, reserves the
ports, starts the workers (`python -m shipyard.serving.worker_main`, each given the resolved
settings as JSON and one end of a socket pair), and then only supervises:

- **Ports.** Each worker opens its own HTTP (and gRPC) listener on the same port with
  SO_REUSEPORT, so the kernel spreads new connections over them evenly (one shared socket,
  as uvicorn's own workers use, piles load on a few). A port another program holds fails
  loudly first: the supervisor binds it once *without* SO_REUSEPORT, then keeps a bound,
  never-listening SO_REUSEPORT socket on it so nothing outside the group can join.
- **Metrics.** Workers run prometheus_client in multiprocess mode on one folder; any
  worker's /metrics sums them all, and a dead worker's counters stay in the sum, so
  consecutive scrapes never look like counter resets.
- **Peers.** A worker that loads or unloads a model on request, or decides a rollout, tells
  the supervisor, which passes it to the other workers (`serving.peers`): one repository,
  one state. Each worker also polls the repository itself.
- **Audit.** Each worker appends its own chain (`audit.jsonl` -> `audit.worker1.jsonl`, ...);
  `shipyard audit verify` checks the siblings together.
- **Failures.** A worker that exits before it is ready stops everything (its error is the
  start-up error); one that dies later is restarted, with back-off.
- **Signals.** SIGHUP is passed to every worker (reload); SIGTERM or SIGINT is passed on and
  every worker drains (`--shutdown-delay`, `--drain-timeout`); the supervisor exits 0 once
  all have. A second signal kills them all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.serving.http.balance import METRICS_ENV, create_slots, mark_not_listening
from shipyard.serving.lifecycle import StartupError
from shipyard.serving.peers import INDEX_ENV
from shipyard.serving.settings import ServerSettings
from shipyard.serving.workers_collector import PIDS_FILE

log = logging.getLogger("shipyard.serving.workers")

SETTINGS_ENV = "SHIPYARD_WORKER_SETTINGS"
FD_ENV = "SHIPYARD_WORKER_FD"
BACKOFF_S = (1.0, 30.0)
"""First and longest pause before a dead worker is started again."""
HEALTHY_S = 60.0
"""A worker that ran this long restarts without back-off when it dies."""


def worker_audit_log(path: Path, index: int) -> Path:
    """Worker `index`'s own audit chain beside `path` (audit.jsonl -> audit.worker1.jsonl)."""
    return path.with_name(f"{path.stem}.worker{index + 1}{path.suffix}")


def reserve_port(host: str, port: int, what: str) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket on the port (0: a free one).

    First bound plainly: a port any other program holds, even with SO_REUSEPORT, fails
    here with one line (gRPC would otherwise join such a group silently)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = host.strip("[]")
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        port = probe.getsockname()[1]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{what} port {port} on {host} is in use; stop the other server or pick "
                "another port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    finally:
        probe.close()
    keep = socket.socket(family, socket.SOCK_STREAM)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        keep.bind((address, port))
    except OSError as exc:
        keep.close()
        raise StartupError(f"{what} port {port} on {host} was taken while starting") from exc
    return keep


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    restarts: int = 0
    """Deaths in a row (the back-off)."""
    restarted: int = 0
    """Times started again since the supervisor started (exported per worker)."""
    ever_ready: bool = False


class Supervisor:
    """Starts, links, restarts and stops the worker processes."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.count = settings.workers
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="shipyard-metrics-"))
        create_slots(self.metrics_dir, self.count)  # connection balancing (http.balance)
        self.workers = [Worker(i) for i in range(self.count)]
        self.stopping = False
        self.signals = 0
        self._reserved: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    def reserve(self) -> ServerSettings:
        """Reserve the ports; the settings every worker runs with (real ports)."""
        s = self.settings
        http = reserve_port(s.host, s.port, "HTTP")
        self._reserved.append(http)
        update: dict[str, Any] = {"port": http.getsockname()[1]}
        if s.grpc_port is not None:
            grpc = reserve_port(s.host, s.grpc_port, "gRPC")
            self._reserved.append(grpc)
            update["grpc_port"] = grpc.getsockname()[1]
        self.settings = s.model_copy(update=update)
        return self.settings

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            for worker in self.workers:
                await self._start(worker)
            code = await self._until_ready()
            if code is not None:
                return code
            host = self.settings.host
            log.info(
                "serving %s on http://%s:%d with %d workers (SO_REUSEPORT)%s",
                self.settings.repository,
                f"[{host}]" if ":" in host else host,
                self.settings.port,
                self.count,
                "" if self.settings.grpc_port is None else f", gRPC on {self.settings.grpc_port}",
            )
            return await self._supervise()
        finally:
            for sock in self._reserved:
                sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    # -- workers --------------------------------------------------------------------------

    async def _start(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        settings = self.settings
        if settings.audit_log is not None:
            audit = worker_audit_log(settings.audit_log, worker.index)
            settings = settings.model_copy(update={"audit_log": audit})
        env = {
            **os.environ,
            SETTINGS_ENV: settings.model_dump_json(),
            INDEX_ENV: str(worker.index),
            FD_ENV: str(theirs.fileno()),
            METRICS_ENV: str(self.metrics_dir),
        }
        worker.ready = asyncio.Event()
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shipyard.serving.worker_main",
            env=env,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        theirs.close()
        worker.started_at = time.monotonic()
        reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        self._spawn(self._read(worker, reader))
        self._spawn(self._wait(worker))
        self._write_pids()

    async def _read(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "ready":
                worker.ever_ready = True
                worker.ready.set()
                self._changed.set()
            elif message.get("op") == "broadcast":
                self._relay(worker, message.get("message"))

    def _relay(self, sender: Worker, message: Any) -> None:
        line = json.dumps({"op": "peer", "message": message}).encode() + b"\n"
        for worker in self.workers:
            if worker is not sender and worker.writer is not None and worker.ready.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    worker.writer.write(line)

    async def _wait(self, worker: Worker) -> None:
        assert worker.proc is not None
        await worker.proc.wait()
        worker.ready.clear()
        mark_not_listening(self.metrics_dir, worker.index)
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                worker.proc.pid, str(self.metrics_dir)
            )
        self._changed.set()

    async def _until_ready(self) -> int | None:
        """None once every worker is ready; an exit code when one failed to start."""
        while not all(w.ready.is_set() for w in self.workers):
            failed = [w for w in self.workers if _exited(w) and not w.ever_ready]
            if failed or self.stopping:
                await self._stop_all(signal.SIGTERM)
                code = failed[0].proc.returncode if failed and failed[0].proc else 1
                return 1 if self.stopping and not failed else (code or 1)
            self._changed.clear()
            await self._changed.wait()
        return None

    async def _supervise(self) -> int:
        while not self.stopping:
            self._changed.clear()
            for worker in self.workers:
                if _exited(worker) and not self.stopping:
                    await self._restart(worker)
            if not self.stopping:
                await self._changed.wait()
        return await self._drain()

    async def _restart(self, worker: Worker) -> None:
        assert worker.proc is not None
        ran = time.monotonic() - worker.started_at
        worker.restarts = 0 if ran > HEALTHY_S else worker.restarts + 1
        pause = (
            0.0
            if worker.restarts == 0
            else min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (worker.restarts - 1))
        )
        log.error(
            "worker %d (pid %d) exited with %s after %.1f s; starting it again in %.0f s",
            worker.index + 1,
            worker.proc.pid,
            _status(worker.proc.returncode),
            ran,
            pause,
        )
        if pause:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), pause)
        if not self.stopping:
            worker.restarted += 1
            await self._start(worker)

    async def _stopped(self) -> None:
        while not self.stopping:
            self._changed.clear()
            await self._changed.wait()

    async def _drain(self) -> int:
        s = self.settings
        budget = s.shutdown_delay_s + s.drain_timeout_s + 15
        await self._stop_all(signal.SIGTERM, wait_s=budget)
        codes = [w.proc.returncode for w in self.workers if w.proc is not None]
        if any(c != 0 for c in codes):
            log.error("workers exited with %s", ", ".join(_status(c) for c in codes))
            return 1
        return 0

    async def _stop_all(self, sig: int, *, wait_s: float = 30.0) -> None:
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        if not live:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in live], timeout=wait_s
        )
        for proc in live:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)

    # -- signals ----------------------------------------------------------------------------

    def _on_stop_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals > 1:  # the second signal: now
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            os._exit(128 + sig)
        log.info("%s: draining %d workers", signal.Signals(sig).name, self.count)
        self.stopping = True
        self._changed.set()

    def _forward(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def _write_pids(self) -> None:
        live = [w for w in self.workers if w.proc is not None]
        doc = {
            "pids": {str(w.index + 1): w.proc.pid for w in live if w.proc is not None},
            "restarts": {str(w.index + 1): w.restarted for w in self.workers},
        }
        target = self.metrics_dir / PIDS_FILE
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(doc), encoding="utf-8")
        temporary.replace(target)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _exited(worker: Worker) -> bool:
    return worker.proc is not None and worker.proc.returncode is not None


def _status(code: int | None) -> str:
    if code is None:
        return "no status"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def serve_workers(settings: ServerSettings) -> int:
    """Run `settings.workers` workers until a signal drains them; the exit code."""
    supervisor = Supervisor(settings)
    supervisor.reserve()
    return asyncio.run(supervisor.run())
