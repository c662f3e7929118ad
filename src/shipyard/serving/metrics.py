"""Prometheus metrics and the V2 statistics extension, fed by the same observe_* calls.

Each server owns a `Metrics` with its own CollectorRegistry, so several servers (tests)
never share counters. Every observation updates the Prometheus series and the per-version
`VersionStats` that `GET /v2/models/stats` reports in Triton's JSON shape, in one call, so
the two views cannot disagree.

Under `--workers N` (PROMETHEUS_MULTIPROC_DIR set by the supervisor) counters, histograms
and gauges live in prometheus_client's multiprocess files, and `exposition()` sums every
worker's (gauges by their `multiprocess_mode`: queue depth and pending audit records add up,
versions loaded and audit health take the lowest worker); series that only a process can
compute at scrape time (drift, on every live worker's window summed: `shared_drift`; process
CPU and memory, per worker with a `worker` label) come from the scraped worker's
`local_registry`. `GET /v2/models/stats` sums every worker's statistics (`shared_stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from shipyard.serving import shared_stats
from shipyard.serving.request_tally import RequestTally
from shipyard.serving.workers_collector import WorkersProcessCollector

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
OUTCOMES = ("success", "invalid", "overloaded", "not_ready", "timeout", "cancelled", "error")
AUTH_FAILURE_REASONS = (
    "missing_token",
    "invalid_token",
    "expired",
    "revoked",
    "insufficient_scope",
)
NOT_FOUND_KINDS = ("model", "version", "route")


@dataclass
class DurationStat:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    """Cumulative statistics of one model version since it was first loaded."""

    success: DurationStat = field(default_factory=DurationStat)
    fail: DurationStat = field(default_factory=DurationStat)
    queue: DurationStat = field(default_factory=DurationStat)
    compute_infer: DurationStat = field(default_factory=DurationStat)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, DurationStat] = field(default_factory=dict)

    def to_triton(self, name: str, version: str) -> dict[str, Any]:
        zero = DurationStat().to_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": stat.to_json(),
                    "compute_output": zero,
                }
                for size, stat in sorted(self.batches.items())
            ],
        }


class Metrics:
    """The server's counters; transports and the manager report here, never to globals."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.multiprocess_dir = Path(folder) if folder else None
        """The workers' shared metrics folder (`--workers N`), else None."""
        self.local_registry = (
            self.registry if self.multiprocess_dir is None else CollectorRegistry()
        )
        """Where collectors that compute their series at scrape time register (drift):
        the registry itself, or under `--workers N` the scraped worker's own."""
        self._depths: dict[tuple[str, str], Callable[[], int]] = {}
        self._functions: list[tuple[Gauge, Callable[[], float]]] = []
        labels = ("model", "version")
        self.requests = Counter(
            "shipyard_requests",
            "Inference requests by outcome.",
            (*labels, "protocol", "outcome"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "shipyard_request_duration_seconds",
            "Time from request received to response ready.",
            (*labels, "protocol"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "shipyard_queue_duration_seconds",
            "Time a request waited in the batch queue.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "shipyard_compute_duration_seconds",
            "Model run time of the batch a request ran in.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "shipyard_batch_size",
            "Rows per executed batch.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_drops = Counter(
            "shipyard_queue_drops",
            "Requests that never ran, by reason: queue_full (refused, 503), timeout (their "
            "deadline passed while queued, 504), disconnected (the client left while queued).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "shipyard_queue_depth",
            "Requests waiting in the batch queue.",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.requests_in_flight = Gauge(
            "shipyard_requests_in_flight",
            "Inference requests holding a model version now: queued or running (a drain "
            "waits for them).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.models_loaded = Gauge(
            "shipyard_models_loaded",
            "Model versions loaded and ready.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.load_failures = Counter(
            "shipyard_model_load_failures",
            "Model versions that failed to load or warm up.",
            ("model",),
            registry=self.registry,
        )
        # -- refusals and the process (security hardening): 401/403/404 were in no series --
        self.auth_failures = Counter(
            "shipyard_auth_failures",
            "Calls refused by authentication (401) or scope (403), by reason.",
            ("reason", "protocol"),
            registry=self.registry,
        )
        self.not_found = Counter(
            "shipyard_not_found",
            "404 answers: an unknown model, an unknown version, or no such route.",
            ("kind",),
            registry=self.registry,
        )
        for kind in NOT_FOUND_KINDS:  # present from the start, so rate() has a zero to start at
            self.not_found.labels(kind)
        if self.multiprocess_dir is None:
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _memory…
        else:
            self.local_registry.register(WorkersProcessCollector(self.multiprocess_dir))
        PlatformCollector(registry=self.local_registry)  # python_info
        # -- audit log health (fed by serving.audit_trail.AuditWriter.attach) --
        self.audit_healthy = Gauge(
            "shipyard_audit_healthy",
            "1 while the audit log can be written (or there is none), 0 while audited calls "
            "are refused because it cannot.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.audit_healthy.set(1)
        self.audit_write_failures = Counter(
            "shipyard_audit_write_failures",
            "Failed attempts to append to the audit log (each retry counts).",
            registry=self.registry,
        )
        self.audit_pending = Gauge(
            "shipyard_audit_pending_records",
            "Audit records queued and not yet written.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.audit_waits = Counter(
            "shipyard_audit_backpressure_waits",
            "Audited calls that waited for room in the audit backlog (the disk is slow).",
            registry=self.registry,
        )
        self.audit_restarts = Counter(
            "shipyard_audit_writer_restarts",
            "Audit writer threads restarted after one died.",
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "shipyard_worker_restarts",
            'Worker processes of isolated models (isolation = "process") started again, by '
            "reason: crashed (the last one died), timeout (killed at its execution timeout), "
            "start_failed (the previous restart could not load the version).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self._stats: dict[tuple[str, str], VersionStats] = {}
        self._children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        """The labelled series of each request outcome (`.labels()` locks and validates)."""
        self._tallies: dict[tuple[str, str, str, str], RequestTally] = {}
        """Requests observed since the last `flush`, by their series' labels (request_tally)."""

    def stats_for(self, model: str, version: str) -> VersionStats:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats()
        return stats

    def observe_request(
        self,
        *,
        model: str,
        version: str,
        protocol: str,
        outcome: str,
        total_ns: int,
        queue_ns: int = 0,
        compute_ns: int = 0,
    ) -> None:
        """One inference request that reached a model version, successful or not.

        Called on the event loop. Its durations are kept as they are; one `flush`, once the
        loop has run what is ready (a batch's requests finish in the same turn of the loop),
        and before every scrape or statistics read, adds them to the Prometheus series and
        the version's statistics (`request_tally`)."""
        key = (model, version, protocol, outcome)
        tally = self._tallies.get(key)
        if tally is None:
            if not self._tallies:
                self._flush_soon()
            tally = self._tallies[key] = RequestTally(
                self.stats_for(model, version), LATENCY_BUCKETS, success=outcome == "success"
            )
        tally.samples.append((total_ns, queue_ns, compute_ns))

    def _flush_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # no loop (a tool, a test): the next scrape
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Add the requests tallied since the last flush to their Prometheus series."""
        tallies, self._tallies = self._tallies, {}
        for key, tally in tallies.items():
            model, version, protocol, outcome = key
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.requests.labels(model, version, protocol, outcome),
                    self.request_seconds.labels(model, version, protocol),
                    self.queue_seconds.labels(model, version),
                    self.compute_seconds.labels(model, version),
                )
            requests, request_seconds, queue_seconds, compute_seconds = children
            total, queue, compute = tally.fold()
            requests.inc(len(tally.samples))
            total.into(request_seconds)
            if outcome == "success":
                queue.into(queue_seconds)
                compute.into(compute_seconds)

    def observe_auth_failure(self, *, reason: str, protocol: str) -> None:
        """One call refused with 401/403; `reason` is one of AUTH_FAILURE_REASONS."""
        self.auth_failures.labels(reason, protocol).inc()

    def observe_not_found(self, kind: str) -> None:
        """One 404 answer; `kind` is one of NOT_FOUND_KINDS."""
        self.not_found.labels(kind).inc()

    def observe_batch(self, *, model: str, version: str, rows: int, compute_ns: int) -> None:
        """One executed batch (`rows` = sum of the requests' dim 0)."""
        self.batch_size.labels(model, version).observe(rows)
        stats = self.stats_for(model, version)
        stats.execution_count += 1
        stats.inference_count += rows
        stats.batches.setdefault(rows, DurationStat()).add(compute_ns)

    def observe_drop(self, *, model: str, version: str, reason: str) -> None:
        """One request dropped unrun; `reason` is one of batching.DROP_REASONS."""
        self.queue_drops.labels(model, version, reason).inc()

    def track_queue(self, model: str, version: str, depth: Callable[[], int]) -> None:
        if self.multiprocess_dir is not None:  # set by `refresh`, not read at scrape time
            self._depths[(model, version)] = depth
            return
        self.queue_depth.labels(model, version).set_function(lambda: float(depth()))

    def forget_queue(self, model: str, version: str) -> None:
        if self._depths.pop((model, version), None) is not None:
            self.queue_depth.labels(model, version).set(0)  # multiprocess files keep labels
            return
        with contextlib.suppress(KeyError):
            self.queue_depth.remove(model, version)

    def gauge_function(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """`gauge` reads `value()` at every scrape (under `--workers N`: at every `refresh`)."""
        if self.multiprocess_dir is None:
            gauge.set_function(value)
        else:
            self._functions.append((gauge, value))

    def refresh(self) -> None:
        """Under `--workers N`: write this worker's tallied requests and the gauges that a
        function computes (queue depths, audit health); the worker calls it about once a
        second, so another worker's scrape sees this one's requests at most a second late."""
        self.flush()
        for (model, version), depth in list(self._depths.items()):
            self.queue_depth.labels(model, version).set(float(depth()))
        for gauge, value in self._functions:
            gauge.set(value())
        if self.multiprocess_dir is not None:
            shared_stats.dump(self._stats, self.multiprocess_dir)

    def model_stats(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Triton's `model_stats` list, optionally for one model or one version of it
        (under `--workers N`, every worker's, summed: `shared_stats`)."""
        self.flush()  # the requests answered in this turn of the loop
        every = self._stats
        if self.multiprocess_dir is not None:
            every = shared_stats.merged(self._stats, self.multiprocess_dir)
        return [
            stats.to_triton(n, v)
            for (n, v), stats in sorted(every.items(), key=lambda kv: (kv[0][0], int(kv[0][1])))
            if (name is None or n == name) and (version is None or v == version)
        ]

    def exposition(self) -> bytes:
        """All series in the Prometheus text format (every worker's under `--workers N`)."""
        self.flush()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(summed) + generate_latest(self.local_registry)
