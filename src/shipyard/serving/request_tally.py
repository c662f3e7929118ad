"""Request observations held between Prometheus writes (`Metrics.observe_request` / `flush`).

Each Prometheus observation takes a lock per value, and under `--workers N` writes the
value's bytes to the worker's file; three histogram observations and a counter per request
were a measured share of a small model's request. `Metrics` keeps each request's durations
here and, once per turn of the event loop (and before any read), folds them into each
series' Prometheus child and the version's statistics.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.serving.metrics import VersionStats


class Buckets:
    """Observations of one histogram series since the last flush: per-bucket counts, sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        """The histogram's upper bounds, without +Inf (as it was created with)."""
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def add(self, value: float) -> None:
        # Prometheus's bucket for a value is the first whose upper bound is >= it
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def into(self, histogram: Any) -> None:
        """Add these observations to a labelled prometheus_client `Histogram` child."""
        values = histogram._buckets  # its per-bucket values, which observe() increments
        for index, count in enumerate(self.counts):
            if count:
                values[index].inc(count)
        histogram._sum.inc(self.sum)


class RequestTally:
    """One request series' requests since the last flush, as they came: (total, queue,
    compute) ns each; `fold` turns them into histogram tallies and the version's stats.

    Appending a tuple is all a request costs here; the buckets and sums are computed once
    per flush in one loop (a batch's requests finish in the same turn of the event loop)."""

    __slots__ = ("bounds", "samples", "stats", "success")

    def __init__(self, stats: VersionStats, bounds: Sequence[float], *, success: bool) -> None:
        self.stats = stats
        self.bounds = bounds
        self.success = success
        """Successful requests also observe their queue and compute times."""
        self.samples: list[tuple[int, int, int]] = []

    def fold(self) -> tuple[Buckets, Buckets, Buckets]:
        """(total, queue, compute) histogram tallies in seconds (queue and compute empty for
        failed requests); the version's statistics are updated with the same requests."""
        bounds, samples, stats = self.bounds, self.samples, self.stats
        total, queue, compute = Buckets(bounds), Buckets(bounds), Buckets(bounds)
        find = bisect.bisect_left  # Prometheus's bucket: the first upper bound >= the value
        totals = total.counts
        # Each value in seconds is added as prometheus_client's observe() would add it (the
        # same float sum); the statistics keep exact integer nanoseconds.
        total_ns = 0
        total_s = 0.0
        if not self.success:
            for t, _, _ in samples:
                value = t / 1e9
                totals[find(bounds, value)] += 1
                total_s += value
                total_ns += t
            total.sum = total_s
            stats.fail.add(total_ns, len(samples))
            return total, queue, compute
        queues, computes = queue.counts, compute.counts
        queue_ns = compute_ns = 0
        queue_s = compute_s = 0.0
        for t, q, c in samples:
            value = t / 1e9
            totals[find(bounds, value)] += 1
            total_s += value
            value = q / 1e9
            queues[find(bounds, value)] += 1
            queue_s += value
            value = c / 1e9
            computes[find(bounds, value)] += 1
            compute_s += value
            total_ns += t
            queue_ns += q
            compute_ns += c
        total.sum, queue.sum, compute.sum = total_s, queue_s, compute_s
        n = len(samples)
        stats.success.add(total_ns, n)
        stats.queue.add(queue_ns, n)
        stats.compute_infer.add(compute_ns, n)
        stats.last_inference_ms = time.time_ns() // 1_000_000
        return total, queue, compute
