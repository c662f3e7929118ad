"""Process isolation (`isolation = "process"`): a version's runtime in a supervised worker.

A model that crashes ONNX Runtime (a custom op, an allocator abort, the OOM killer) or
hangs in it takes the whole server with it when it runs in the server's process. With
isolation its `ProcessRuntime` (the Runtime interface the batcher calls) hands each batch
to a worker process (`worker_process.Worker`: a fresh interpreter, never a fork of the
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

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import RuntimeBackendError
from shipyard.model import Model
from shipyard.package.manifest import Manifest, read_manifest
from shipyard.package.store import resolve_version_dir
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.base import RuntimeOptions, check_inputs
from shipyard.runtime.synthesis import InputHints
from shipyard.runtime.worker import WorkerSpec
from shipyard.serving.errors import WorkerUnavailable
from shipyard.serving.model_config import WorkerSettings
from shipyard.serving.worker_process import CLOSE_GRACE_S, Lost, Worker

if TYPE_CHECKING:
    from shipyard.processing.padding import BatchPadding
    from shipyard.serving.ray_pool import RayRuntime

log = logging.getLogger("shipyard.serving.isolation")

INITIAL_BACKOFF_S = 0.1
HEALTHY_S = 30.0
"""A worker that stayed up this long resets the restart back-off."""
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
    return remote_model(
        version_dir,
        manifest,
        runtime,
        digest=runtime.digest,
        where="its model worker",
        graph_hints=runtime.graph_hints,
        batch_padding=runtime.batch_padding,
        kek=kek,
    )


def remote_model(
    version_dir: Path,
    manifest: Manifest,
    runtime: ProcessRuntime | RayRuntime,
    *,
    digest: str,
    where: str,
    graph_hints: Mapping[str, InputHints],
    batch_padding: BatchPadding | None,
    kek: bytes | None,
) -> Model:
    """A version whose runtime runs elsewhere (`where` loaded and verified it, reporting
    `digest`) as a Model here, with its processing; the runtime is closed on failure."""
    try:
        if digest != manifest.digest:
            raise RuntimeBackendError(
                f"{version_dir}: the version changed while {where} loaded it; retry"
            )
        return Model(
            version_dir,
            manifest,
            runtime,
            graph_hints=graph_hints,
            assets=decrypted_assets(version_dir, manifest, kek),
            batch_padding=batch_padding,
        )
    except BaseException:
        runtime.close()
        raise


def decrypted_assets(
    version_dir: Path, manifest: Manifest, kek: bytes | None
) -> dict[str, bytes] | None:
    """An encrypted package's processing assets (a tokenizer), decrypted in memory: the
    processing runs here, in the server, before a request joins a batch."""
    if manifest.encryption is None or manifest.processing is None:
        return None
    from shipyard.security.encryption import decrypt_assets
    from shipyard.security.keys import kek_from_env

    key = kek if kek is not None else kek_from_env()
    assert key is not None  # the worker could not have loaded it without one
    return decrypt_assets(version_dir, manifest, key)


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
        self._lost: Lost | None = None
        try:
            first = Worker(spec, timeout_s=settings.start_timeout_s, cancel=self._cancel)
        except Lost as lost:
            self._cancel.close()
            self._cancel_w.close()
            raise RuntimeBackendError(f"model worker: {lost.reason}") from None
        except BaseException:
            self._cancel.close()
            self._cancel_w.close()
            raise
        self._worker: Worker | None = first
        self._up_since = time.monotonic()
        self.digest = first.info.digest
        self.graph_hints: dict[str, InputHints] = first.info.graph_hints
        self.batch_padding = first.info.batch_padding
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
            except Lost as lost:
                reason = self._mark_lost(worker, lost)  # before the kill wakes the supervisor
                worker.kill()  # hung, or out of step with this side: it cannot be trusted on
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

    def _mark_lost(self, worker: Worker, lost: Lost) -> str:
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
                lost = self._lost or worker.died()
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

    def _restart(self, lost: Lost, backoff: float) -> tuple[Worker | None, float]:
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
                extra={
                    "model": self.name,
                    "version": self.version,
                    "reason": kind,
                    "restarts": self.restarts,
                },
            )
            if self.on_restart is not None:
                self.on_restart(kind)
            if wait([self._cancel], timeout=backoff):
                return None, backoff
            backoff = min(backoff * 2, self.settings.max_restart_backoff_s)
            try:
                new = Worker(
                    self._spec, timeout_s=self.settings.start_timeout_s, cancel=self._cancel
                )
            except Lost as exc:
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
