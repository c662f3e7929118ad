"""One model worker process as the server sees it: start, run a batch, notice death, stop.

`serving.isolation.ProcessRuntime` supervises these; this module is the mechanics. The
worker is a fresh `python -c` (`runtime.worker.COMMAND`) whose only inherited descriptor is
one end of a socket pair; the batches' tensors travel in two shared-memory segments this
side owns (`runtime.shm_tensors`), grown when a batch needs more. Every wait on the worker
also watches its exit (`WorkerProcess.sentinel`), so a death is noticed at once, not at a
timeout. Failures are `Lost`: "crashed", "timeout" (no answer by the deadline) or "closed"
(the runtime is closing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import RuntimeBackendError
from shipyard.runtime import worker as worker_main
from shipyard.runtime.shm_tensors import Packed, create_segment, free_segment, grown, read
from shipyard.runtime.worker import ERROR_KINDS, WorkerInfo, WorkerSpec

CLOSE_GRACE_S = 5.0
"""How long a closing worker may take to exit before it is killed."""


class Lost(Exception):
    """The worker cannot answer: `kind` "crashed", "timeout" or "closed", and why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Worker:
    """One worker process, its pipe, and the input and output segments this side owns."""

    def __init__(self, spec: WorkerSpec, *, timeout_s: float, cancel: Connection) -> None:
        """Start a worker and wait until it has loaded the version (or failed to)."""
        ours, theirs = socket.socketpair()
        try:
            self.process = WorkerProcess(theirs.fileno())
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.process.pid
        try:
            self._send(spec)
            reply = self._reply(
                time.monotonic() + timeout_s,
                cancel=cancel,
                late=f"did not load the version within start_timeout_s = {timeout_s:g} s",
            )
            if reply[0] != "ready":
                raise RuntimeBackendError(f"its model worker could not load it: {reply[2]}")
            self.info: WorkerInfo = reply[1]
            self.inputs = _segment(0)
            self.outputs = _segment(0)
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
            segment = _segment(grown(self.inputs.size, packed.size))
            free_segment(self.inputs)
            self.inputs = segment
        headers = packed.write(_buf(self.inputs))
        deadline = time.monotonic() + timeout_s
        self._send(("run", self.inputs.name, headers, self.outputs.name, names))
        late = f"did not answer within execution_timeout_s = {timeout_s:g} s and was killed"
        reply = self._reply(deadline, late=late)
        if reply[0] == "grow":
            try:
                segment = _segment(grown(self.outputs.size, int(reply[1])))
            except RuntimeBackendError:
                self._send(("output", None))  # the worker drops this batch's outputs
                raise
            free_segment(self.outputs)
            self.outputs = segment
            self._send(("output", segment.name))
            reply = self._reply(deadline, late=late)
        if reply[0] == "ok":
            return read(_buf(self.outputs), reply[1], copy=True)
        if reply[0] == "error":
            raise ERROR_KINDS.get(reply[1], RuntimeBackendError)(reply[2])
        raise Lost("crashed", f"its worker process (pid {self.pid}) sent {reply[0]!r}")

    def _send(self, message: object) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise self.died() from None

    def _reply(self, deadline: float, *, late: str, cancel: Connection | None = None) -> Any:
        """The worker's next message; Lost when it dies, misses `deadline` (`late` says
        so) or `cancel` is readable (the runtime is closing)."""
        waitables: list[Any] = [self.conn, self.process.sentinel]
        if cancel is not None:
            waitables.append(cancel)
        ready = wait(waitables, timeout=max(0.0, deadline - time.monotonic()))
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                raise self.died() from None
        if self.process.sentinel in ready:
            raise self.died()
        if ready:
            raise Lost("closed", "the model is being unloaded")
        raise Lost("timeout", f"its worker process (pid {self.pid}) {late}")

    def died(self) -> Lost:
        self.process.join(1.0)  # the pipe may close a moment before the exit status is there
        return Lost("crashed", f"its worker process (pid {self.pid}) {exit_text(self.process)}")

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


class WorkerProcess:
    """A worker interpreter, and a descriptor that turns readable once it has exited.

    A fresh `python -c` (multiprocessing's "spawn" would run the parent's main script
    again, which breaks any `shipyard.serve()` script without a `__main__` guard) in its
    own session, so a terminal's Ctrl-C reaches the server alone; it inherits only `fd`.
    A reaper thread waits for it and closes a pipe: that is the `sentinel`.
    """

    def __init__(self, fd: int) -> None:
        self._popen = subprocess.Popen(
            [sys.executable, "-c", worker_main.COMMAND, str(fd), _SOURCE_ROOT],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
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


def _segment(size: int) -> shared_memory.SharedMemory:
    """A new segment for a batch; a full /dev/shm fails that batch (500), not the worker."""
    try:
        return create_segment(size)
    except OSError as exc:
        raise RuntimeBackendError(f"{exc}; make /dev/shm larger or send smaller batches") from exc


def exit_text(process: WorkerProcess) -> str:
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


def _buf(segment: shared_memory.SharedMemory) -> memoryview:
    buf = segment.buf
    assert buf is not None  # None only once closed, and this side closes it last
    return buf
