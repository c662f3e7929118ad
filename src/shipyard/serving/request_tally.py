"""Request observations held between Prometheus writes (`Metrics.observe_request` / `flush`).

Each Prometheus observation takes a lock per value, and under `--workers N` writes the
value's bytes to the worker's file; three histogram observations and a counter per request
were a measured share of a small model's request. `Metrics` tallies them here and adds each
series' tally to its Prometheus child once per turn of the event loop.
"""

from __future__ import annotations

import bisect
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
    """One request series' observations since the last flush, and its version's stats."""

    __slots__ = ("compute", "count", "queue", "stats", "total")

    def __init__(self, stats: VersionStats, bounds: Sequence[float]) -> None:
        self.stats = stats
        self.count = 0
        self.total = Buckets(bounds)
        self.queue = Buckets(bounds)
        self.compute = Buckets(bounds)
