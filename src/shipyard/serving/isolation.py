"""Process isolation (`isolation = "process"`): a version's runtime in a supervised worker.

A model that crashes ONNX Runtime (a custom op, an allocator abort, the OOM killer) or
hangs in it takes the whole server with it when it runs in the server's process. With
isolation its `ProcessRuntime` (the Runtime interface the batcher calls) hands each batch
to a worker process (`runtime.worker`, started with the "spawn" context: never fork a
threaded server) through shared memory (`runtime.shm_tensors`: no tensor is pickled), and:

- a worker that dies under a batch (its process sentinel or pipe says so) fails that batch
  at once with `WorkerUnavailable` (503, the reason in the message), for every request of
  it; a batch not answered within `[worker] execution_timeout_s` gets the same after the
  worker is SIGKILLed;
- while no worker is up, `down` says why: the manager answers 503 for the version and
  strict readiness (`/v2/health/ready`) is false until a new worker has loaded it;
- a supervisor thread restarts it with exponential back-off (0.1 s doubling up to
  `max_restart_backoff_s`, back to 0.1 s after a worker stayed up `HEALTHY_S`), logs each
  restart once (WARNING: model, version, reason, count) and reports it to `on_restart`
  (`shipyard_worker_restarts_total{model,version,reason}`, reason one of RESTART_REASONS).

The worker loads the version itself with `shipyard.load_model`, so every hash and the
signature are checked in the process that runs it; the KEK is sent over the pipe. The
server never opens an ONNX Runtime session for an isolated version: it reads the manifest
and checks that its digest is the one the worker verified (`open_isolated`), at every
(re)start. One worker per version runs one batch at a time: `instances` threads queue for it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import RuntimeBackendError
from shipyard.model import Model
from shipyard.package.manifest import read_manifest
from shipyard.package.store import resolve_version_dir
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime import worker as worker_main
from shipyard.runtime.base import RuntimeOptions, check_inputs
from shipyard.runtime.shm_tensors import Packed, create_segment, free_segment, grown, read
from shipyard.runtime.synthesis import InputHints
from shipyard.runtime.worker import ERROR_KINDS, WorkerInfo, WorkerSpec
from shipyard.serving.errors import WorkerUnavailable
from shipyard.serving.model_config import WorkerSettings

log = logging.getLogger("shipyard.serving.isolation")

INITIAL_BACKOFF_S = 0.1
HEALTHY_S = 30.0
"""A worker that stayed up this long resets the restart back-off."""
CLOSE_GRACE_S = 5.0
"""How long a closing worker may take to exit before it is killed."""
RESTART_REASONS = ("crashed", "timeout", "start_failed")
"""Why a worker was (re)started: the last one died, hung past its execution timeout, or
the previous restart failed to load the version."""


def open_isolated(
    path: Path,
    version: int,
    settings: WorkerSettings,
    *,
    options: RuntimeOptions,
    public_key: Path | None,
    kek: bytes | None,
) -> Model:
    """The version as a Model whose runtime is a worker process that loaded and verified it."""
    version_dir = resolve_version_dir(path, version)
    spec = WorkerSpec(path, version, options, public_key, kek)
    manifest = read_manifest(version_dir)
    runtime = ProcessRuntime(
        spec, settings, name=manifest.name, inputs=manifest.inputs, outputs=manifest.outputs
    )
    try:
        if runtime.digest != manifest.digest:
            raise RuntimeBackendError(
                f"{version_dir}: the version changed while its model worker loaded it; retry"
            )
        return Model(version_dir, manifest, runtime, graph_hints=runtime.graph_hints)
    except BaseException:
        runtime.close()
        raise


class _Lost(Exception):
    """The worker cannot answer: `kind` "crashed", "timeout" or "closed", and why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _Worker:
    """One worker process, its pipe, and the input and output segments this side owns."""

    def __init__(self, spec: WorkerSpec, *, timeout_s: float, cancel: Connection) -> None:
        """Start a worker and wait until it has loaded the version (or failed to)."""
        ours, theirs = socket.socketpair()
        try:
            self.process = _Process(theirs.fileno())
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.process.pid
        try:
            self.conn.send(spec)
            reply = self._reply(
                time.monotonic() + timeout_s,
                cancel=cancel,
                late=f"did not load the version within start_timeout_s = {timeout_s:g} s",
            )
            if reply[0] != "ready":
                raise RuntimeBackendError(f"its model worker could not load it: {reply[2]}")
            self.info: WorkerInfo = reply[1]
            self.inputs = create_segment(0)
            self.outputs = create_segment(0)
        except BaseException:
            self.kill()
            self.process.join(CLOSE_GRACE_S)
            self.process.close()
            self.conn.close()
            raise

    def run(
        self, feed: Mapping[str, np.ndarray], names: list[str], *, timeout_s: float
    ) -> dict[str, np.ndarray]:
        try:
            packed = Packed(feed)
        except TypeError as exc:
            raise RuntimeBackendError(str(exc)) from exc
        if packed.size > self.inputs.size:
            segment = create_segment(grown(self.inputs.size, packed.size))
            free_segment(self.inputs)
            self.inputs = segment
        headers = packed.write(_buf(self.inputs))
        deadline = time.monotonic() + timeout_s
        self._send(("run", self.inputs.name, headers, self.outputs.name, names))
        late = f"did not answer within execution_timeout_s = {timeout_s:g} s and was killed"
        reply = self._reply(deadline, late=late)
        if reply[0] == "grow":
            segment = create_segment(grown(self.outputs.size, int(reply[1])))
            free_segment(self.outputs)
            self.outputs = segment
            self._send(("output", segment.name))
            reply = self._reply(deadline, late=late)
        if reply[0] == "ok":
            return read(_buf(self.outputs), reply[1], copy=True)
        if reply[0] == "error":
            raise ERROR_KINDS.get(reply[1], RuntimeBackendError)(reply[2])
        raise _Lost("crashed", f"its worker process (pid {self.pid}) sent {reply[0]!r}")

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise self._died() from None

    def _reply(self, deadline: float, *, late: str, cancel: Connection | None = None) -> Any:
        """The worker's next message; _Lost when it dies, misses `deadline` (`late` says
        so) or `cancel` is readable (the runtime is closing)."""
        waitables: list[Any] = [self.conn, self.process.sentinel]
        if cancel is not None:
            waitables.append(cancel)
        ready = wait(waitables, timeout=max(0.0, deadline - time.monotonic()))
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                raise self._died() from None
        if self.process.sentinel in ready:
            raise self._died()
        if ready:
            raise _Lost("closed", "the model is being unloaded")
        raise _Lost("timeout", f"its worker process (pid {self.pid}) {late}")

    def _died(self) -> _Lost:
        self.process.join(1.0)  # the pipe may close a moment before the exit status is there
        return _Lost("crashed", f"its worker process (pid {self.pid}) {exit_text(self.process)}")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def dispose(self) -> None:
        """Free what this side holds (after the process ended)."""
        self.conn.close()
        self.process.close()
        for segment in (getattr(self, "inputs", None), getattr(self, "outputs", None)):
            if segment is not None:
                free_segment(segment)

    def close(self) -> None:
        """Ask the worker to exit, kill it after CLOSE_GRACE_S, free its segments."""
        with contextlib.suppress(OSError):
            self.conn.send(("close",))
        self.process.join(CLOSE_GRACE_S)
        if self.process.is_alive():
            self.kill()
            self.process.join(CLOSE_GRACE_S)
        self.dispose()


class _Process:
    """A worker interpreter, and a descriptor that turns readable once it has exited.

    A fresh `python -c` (multiprocessing's "spawn" would run the parent's main script
    again, which breaks any `shipyard.serve()` script without a `__main__` guard) in its
    own session, so a terminal's Ctrl-C reaches the server alone; it inherits only `fd`.
    A reaper thread waits for it and closes a pipe: that is the `sentinel`.
    """

    def __init__(self, fd: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
        self._popen = subprocess.Popen(
            [sys.executable, "-c", worker_main.COMMAND, str(fd)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.pid = self._popen.pid
        self.sentinel, exited = os.pipe()
        threading.Thread(
            target=self._reap, args=(exited,), name=f"shipyard-reaper-{self.pid}", daemon=True
        ).start()

    def _reap(self, exited: int) -> None:
        self._popen.wait()
        os.close(exited)

    @property
    def exitcode(self) -> int | None:
        """None while running; negative: the signal that ended it."""
        return self._popen.returncode

    def join(self, timeout: float) -> None:
        if self.sentinel >= 0:
            wait([self.sentinel], timeout=timeout)

    def is_alive(self) -> bool:
        return self.sentinel >= 0 and not wait([self.sentinel], timeout=0)

    def kill(self) -> None:
        self._popen.kill()

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
"""Where this `shipyard` package is imported from: the worker runs the same code."""


def exit_text(process: _Process) -> str:
    """How a worker process ended, for messages ("died of signal 9 (SIGKILL)")."""
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"died of signal {-code} ({name})"
    return "exited" if code == 0 else f"exited with status {code}"


def _buf(segment: Any) -> memoryview:
    buf: memoryview = segment.buf
    return buf


class ProcessRuntime:
    """The Runtime interface over one supervised worker process (one batch at a time)."""

    def __init__(
        self,
        spec: WorkerSpec,
        settings: WorkerSettings,
        *,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
    ) -> None:
        """Start the first worker (raising what its load raised); supervision starts then."""
        self.name = name
        self.version = spec.version
        self.settings = settings
        self.on_restart: Callable[[str], None] | None = None
        """Called (on the supervisor thread) with the reason of each restart."""
        self.restarts = 0
        self._spec = spec
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._state = threading.Lock()
        self._run_lock = threading.Lock()
        self._cancel, self._cancel_w = multiprocessing.Pipe(duplex=False)
        self._closing = False
        self._down: str | None = None
        self._lost: _Lost | None = None
        try:
            first = _Worker(spec, timeout_s=settings.start_timeout_s, cancel=self._cancel)
        except _Lost as lost:
            self._cancel.close()
            self._cancel_w.close()
            raise RuntimeBackendError(f"model worker: {lost.reason}") from None
        except BaseException:
            self._cancel.close()
            self._cancel_w.close()
            raise
        self._worker: _Worker | None = first
        self._up_since = time.monotonic()
        self.digest = first.info.digest
        self.graph_hints: dict[str, InputHints] = first.info.graph_hints
        self._providers = first.info.providers
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"shipyard-{name}-{spec.version}-worker", daemon=True
        )
        self._supervisor.start()

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def pid(self) -> int | None:
        """The serving worker's process id; None while none is up."""
        worker = self._worker
        return worker.pid if worker is not None and self._down is None else None

    @property
    def down(self) -> str | None:
        """Why no worker can run a batch now (dead, hung, restarting); None while one can."""
        return "it is being unloaded" if self._closing else self._down

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.run(check_inputs(self._inputs, inputs), output_names)

    def run(
        self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch in the worker; WorkerUnavailable (503) when it dies, hangs or is down."""
        with self._run_lock:
            worker, down = self._worker, self.down
            if down is not None or worker is None:
                raise WorkerUnavailable(self.name, self.version, reason=down or "no worker")
            try:
                return worker.run(
                    feed, list(output_names or ()), timeout_s=self.settings.execution_timeout_s
                )
            except _Lost as lost:
                reason = self._mark_lost(worker, lost)  # before the kill wakes the supervisor
                if lost.kind == "timeout":
                    worker.kill()
                raise WorkerUnavailable(self.name, self.version, reason=reason) from None

    def close(self) -> None:
        """Stop supervising and stop the worker (asked first, killed after CLOSE_GRACE_S)."""
        with self._state:
            if self._closing:
                return
            self._closing = True
            worker, self._worker = self._worker, None
        self._cancel_w.send(None)  # wakes the supervisor, cancels a start in progress
        self._supervisor.join(CLOSE_GRACE_S + 1)  # before the worker's descriptors close
        if worker is not None:
            worker.close()
        self._cancel.close()
        self._cancel_w.close()

    def _mark_lost(self, worker: _Worker, lost: _Lost) -> str:
        with self._state:
            if self._worker is worker and self._lost is None:
                self._lost = lost
                self._down = f"{lost.reason}; restarting it"
            return self._down or lost.reason

    def _supervise(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while True:
            worker = self._worker
            if worker is None:
                return
            wait([worker.process.sentinel, self._cancel])
            if self._closing:
                return
            with self._state:  # a timeout is marked before its kill; a crash is seen here
                lost = self._lost or worker._died()
                self._down = f"{lost.reason}; restarting it"
            with self._run_lock:  # a batch on it notices the death too: let it finish first
                with self._state:
                    self._lost = None
                worker.dispose()
            if time.monotonic() - self._up_since >= HEALTHY_S:
                backoff = INITIAL_BACKOFF_S
            new, backoff = self._restart(lost, backoff)
            if new is None:
                return
            with self._state:
                if self._closing:
                    new.close()
                    return
                self._worker, self._down = new, None
                self._up_since = time.monotonic()
            log.info(
                "model worker for %s version %d is back (pid %d)",
                self.name,
                self.version,
                new.pid,
                extra={"model": self.name, "version": self.version},
            )

    def _restart(self, lost: _Lost, backoff: float) -> tuple[_Worker | None, float]:
        """A new worker after `backoff` (retried, doubling); None once closing."""
        kind, reason = lost.kind, lost.reason
        while not self._closing:
            self.restarts += 1
            log.warning(
                "model worker for %s version %d: %s; restarting it in %.1f s (restart %d)",
                self.name,
                self.version,
                reason,
                backoff,
                self.restarts,
                extra={"model": self.name, "version": self.version, "reason": kind},
            )
            if self.on_restart is not None:
                self.on_restart(kind)
            if wait([self._cancel], timeout=backoff):
                return None, backoff
            backoff = min(backoff * 2, self.settings.max_restart_backoff_s)
            try:
                new = _Worker(
                    self._spec, timeout_s=self.settings.start_timeout_s, cancel=self._cancel
                )
            except _Lost as exc:
                if exc.kind == "closed":
                    return None, backoff
                kind, reason = "start_failed", f"its restarted worker {exc.reason}"
            except Exception as exc:
                kind, reason = "start_failed", f"its worker could not be restarted: {exc}"
            else:
                if new.info.digest == self.digest:
                    return new, backoff
                new.close()
                kind, reason = "start_failed", "its files changed; the manager reloads it"
            with self._state:
                self._down = f"{reason}; retrying"
        return None, backoff
