"""Open one version for serving: verify and open it, warm it up, decide batching, build its batcher.

`open_version` runs on a worker thread (the manager's `_load_version` calls it); what it
decides comes from the version's resolved `VersionConfig`, merged once before the load.
An isolated version (`isolation = "process"`) is opened in its worker process
(`isolation.open_isolated`), a version on Ray in its Serve deployment (`ray_pool`); warm-up
and the batching check then run there too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from shipyard.model import Model, load_model
from shipyard.runtime.onnxrt import OnnxRuntime
from shipyard.serving.arrivals import Arrivals
from shipyard.serving.batching import Batcher
from shipyard.serving.drift import DriftMonitor
from shipyard.serving.isolation import RESTART_REASONS, ProcessRuntime, open_isolated
from shipyard.serving.metrics import Metrics
from shipyard.serving.ray_pool import open_on_ray
from shipyard.serving.run_timing import INLINE_MAX_US
from shipyard.serving.version_config import VersionConfig
from shipyard.serving.version_state import is_remote_runtime
from shipyard.serving.warmup import batching_problem, static_batching_problem, warm_up

log = logging.getLogger("shipyard.serving.manager")


def open_version(
    path: Path,
    version: int,
    resolved: VersionConfig,
    *,
    public_key: Path | None,
    kek: bytes | None,
    drift: DriftMonitor,
) -> tuple[Model, str | None]:
    """Verify, open and warm up one version (on a worker thread).

    Returns the model and, when requests must not be batched along dim 0, why. The manager
    runs it under `swap.read_stable`: when the version is rewritten meanwhile (`shipyard
    encrypt`, key rotation) it is opened again, so what serves is one version as written.
    """
    if resolved.ray is not None:
        model = open_on_ray(
            path, version, resolved.ray, options=resolved.runtime, public_key=public_key, kek=kek
        )
    elif resolved.worker is not None:
        model = open_isolated(
            path,
            version,
            resolved.worker,
            options=resolved.runtime,
            public_key=public_key,
            kek=kek,
        )
    else:
        model = load_model(
            path, version=version, options=resolved.runtime, public_key=public_key, kek=kek
        )
    mode = resolved.warmup
    feed = None
    try:
        if mode:
            result = warm_up(model, strict=mode == "strict")
            feed = result.feed
            if result.warning:
                log.warning(
                    "%s version %d: %s",
                    model.name,
                    version,
                    result.warning,
                    extra={"model": model.name, "version": version},
                )
        wanted = resolved.batching.enabled
        problem = static_batching_problem(model.inputs, model.outputs)
        found_by_running = False
        if problem is None and wanted is not False:
            problem = batching_problem(model, feed)
            found_by_running = problem is not None
        drift.attach(model, resolved.drift)
    except Exception:
        model.close()
        raise
    if problem is not None and (wanted or found_by_running):
        log.warning(
            "%s version %d: batching turned off%s: %s",
            model.name,
            version,
            " though model.toml enables it" if wanted else "",
            problem,
            extra={"model": model.name, "version": version},
        )
    return model, problem


def build_batcher(
    model: Model,
    resolved: VersionConfig,
    problem: str | None,
    *,
    metrics: Metrics,
    arrivals: Arrivals | None = None,
) -> Batcher:
    """The version's batcher: batching off when `problem` says why, else as configured."""
    batching = resolved.batching
    if problem is not None:
        batching = batching.model_copy(update={"enabled": False})
    elif batching.enabled is None:
        batching = batching.model_copy(update={"enabled": True})
    name, version = model.name, str(model.version)
    runtime = model.runtime

    def on_batch(rows: int, requests: int, compute_ns: int) -> None:
        metrics.observe_batch(model=name, version=version, rows=rows, compute_ns=compute_ns)

    def on_drop(reason: str) -> None:
        metrics.observe_drop(model=name, version=version, reason=reason)

    def run(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        # the data plane checked each request's inputs before it joined the batch
        return runtime.run(feed, outputs or None)

    inline_max_us = INLINE_MAX_US
    if is_remote_runtime(runtime):
        inline_max_us = 0  # a round trip to a replica: never on the event loop
    if isinstance(runtime, ProcessRuntime):
        inline_max_us = 0  # a pipe round trip, and a wait of up to the execution timeout
        restarts = metrics.worker_restarts
        for reason in RESTART_REASONS:  # every series from 0, so rate() and alerts see a rise
            restarts.labels(name, version, reason)
        runtime.on_restart = lambda reason: restarts.labels(name, version, reason).inc()

    return Batcher(
        run,
        name=name,
        batching=batching,
        workers=resolved.instances,
        on_batch=on_batch,
        on_drop=on_drop,
        priority_levels=resolved.queue.priority_levels,
        retry_after_s=resolved.limits.retry_after_s,
        inline_max_us=inline_max_us,
        thread_cpu_timing=computes_on_caller(runtime),
        settled=None if arrivals is None else arrivals.settled,
    )


def computes_on_caller(runtime: object) -> bool:
    """Whether `runtime`'s runs compute on the calling thread (ONNX Runtime on the CPU only),
    so the thread's CPU time measures a run without the wait for the GIL after it."""
    return isinstance(runtime, OnnxRuntime) and runtime.providers == ["CPUExecutionProvider"]
