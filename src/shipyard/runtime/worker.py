"""The model worker process: loads one version itself, then runs the batches it is sent.

Started by `shipyard.serving.isolation` as a fresh interpreter (`python -c`, never a fork of
the threaded server, and not multiprocessing's "spawn", which re-runs the parent's main
script) with one end of a socket pair as its only inherited descriptor, it receives one
`WorkerSpec` over it (the KEK travels there,
never in argv or the environment), loads the version with `shipyard.load_model` (every
hash and the signature checked again, in this process) and answers "ready" with what the
parent needs to know of it. Then, per batch, a ("run", ...) message names the input
segment and the tensors' headers; outputs go into the output segment, and when they do not
fit the worker asks for a larger one ("grow") before it writes. See `shm_tensors`.

Messages (small tuples, pickled by the Connection; never tensors):
    parent -> worker: WorkerSpec | ("run", in_segment, in_headers, out_segment, outputs)
                      | ("output", segment | None) | ("close",)
    worker -> parent: ("ready", WorkerInfo) | ("ok", out_headers) | ("grow", nbytes)
                      | ("error", kind, message)

SIGINT is ignored (the server stops its workers itself once it has drained). When the
server dies the pipe reads EOF and the worker exits; a watchdog thread also exits it within
PARENT_CHECK_S of the server's death when a batch never ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from shipyard.errors import InputError, ShipyardError
from shipyard.processing.padding import BatchPadding
from shipyard.runtime.base import Runtime, RuntimeOptions
from shipyard.runtime.shm_tensors import Attached, Packed, read
from shipyard.runtime.synthesis import InputHints


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads: one version of a model, as the server would load it."""

    path: Path
    version: int
    options: RuntimeOptions
    public_key: Path | None
    kek: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WorkerInfo:
    """What a loaded worker tells the parent about its version."""

    digest: str
    """The manifest digest it verified (the parent checks it is the version it serves)."""
    providers: list[str]
    graph_hints: dict[str, InputHints]
    batch_padding: BatchPadding | None
    """What the batcher may pad in tokenized text (read from the graph, which only the
    worker opens)."""


PARENT_CHECK_S = 1.0
"""How often a worker checks that the server that started it is still there."""
ERROR_KINDS = {"InputError": InputError}
"""Errors re-raised as themselves in the parent; any other becomes RuntimeBackendError."""


COMMAND = (
    "import sys; sys.argv[2] in sys.path or sys.path.insert(0, sys.argv[2]); "
    "from shipyard.runtime.worker import main; main(int(sys.argv[1]))"
)
"""What `python -c` runs in a worker, given its socket's descriptor and the folder the
server imported `shipyard` from (so the worker runs the same code, even from a checkout)."""


def main(fd: int) -> None:
    """The worker's whole life: load, then serve batches until told to close or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_server, args=(os.getppid(),), daemon=True).start()
    conn = Connection(fd)
    from shipyard.model import load_model  # after the signal setup: importing takes a while

    try:
        spec = conn.recv()
        model = load_model(
            spec.path,
            version=spec.version,
            options=spec.options,
            public_key=spec.public_key,
            kek=spec.kek,
        )
    except EOFError:
        return
    except Exception as exc:
        _send_error(conn, exc)
        return
    runtime = model.runtime
    segments = _Segments()
    try:
        padding = model.processor.batch_padding if model.processor is not None else None
        info = WorkerInfo(model.manifest.digest, runtime.providers, model.graph_hints, padding)
        conn.send(("ready", info))
        while _serve_one(conn, runtime, segments):
            pass
    except (EOFError, OSError):  # the server is gone
        pass
    finally:
        segments.close()
        model.close()


def _serve_one(conn: Connection, runtime: Runtime, segments: _Segments) -> bool:
    """Run one batch and answer it; False when told to close."""
    message = conn.recv()
    if message[0] != "run":
        return False  # ("close",) or anything unexpected
    _, in_name, in_headers, out_name, outputs = message
    feed: dict[str, np.ndarray] | None = None
    try:
        feed = read(segments.attach("in", in_name), in_headers, copy=False)
        packed = Packed(runtime.run(feed, outputs or None))
    except Exception as exc:
        _send_error(conn, exc)
        return True
    finally:
        feed = None  # views into the input segment: it cannot be unmapped while they live
    out = segments.attach("out", out_name)
    if packed.size > len(out):
        conn.send(("grow", packed.size))
        reply = conn.recv()
        if reply[0] != "output":
            return False
        if reply[1] is None:  # the parent could not make room: these outputs are dropped
            return True
        out = segments.attach("out", reply[1])
    conn.send(("ok", packed.write(out)))
    return True


class _Segments:
    """The parent's segments this worker has attached, one per direction (by name)."""

    def __init__(self) -> None:
        self._open: dict[str, Attached] = {}

    def attach(self, role: str, name: str) -> memoryview:
        current = self._open.get(role)
        if current is None or current.name != name:
            if current is not None:
                current.close()
            current = self._open[role] = Attached(name)
        return current.buf

    def close(self) -> None:
        for segment in self._open.values():
            segment.close()
        self._open.clear()


def _exit_with_server(server: int) -> None:
    """Exit once the server is gone, even in the middle of a batch that never ends (a
    SIGKILLed server cannot stop its workers; a worker stuck in a native call would never
    read the EOF on its pipe)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != server:
            os._exit(1)


def _send_error(conn: Connection, exc: BaseException) -> None:
    message = str(exc) if isinstance(exc, ShipyardError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        conn.send(("error", type(exc).__name__, message))
