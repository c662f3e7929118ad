"""Drift measured inside the server: sampled inputs and outputs against the reference profile.

The hot path (`DriftMonitor.observe`, called by the data plane after a successful
inference) draws one random number and, for a sampled request, appends references to its
decoded arrays to a bounded queue. The queue is counted in batches (when it holds
DRAIN_AT requests, and at every scrape) onto the reference's own bin edges, into a ring of
per-segment histograms (`RING_SEGMENTS` full ones cover the last `window` rows, plus the
one filling now); the oldest segment is dropped as a new one starts. PSI, the KS statistic (at the bin edges) and
the Jensen-Shannon distance are computed from those counts at scrape time
(`shipyard_drift_*` gauges), never on the request path.

Everything exported is computed from counts (`snapshot()`), which add across processes:
several workers' windows merge by summing their counts, then `drift_statistics` runs once.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shipyard.model import Model
from shipyard.package.profile import (
    FeatureProfile,
    Profile,
    bin_counts,
    feature_values,
)
from shipyard.package.profile_io import read_profile
from shipyard.serving import shared_drift
from shipyard.serving.settings import DriftSettings

log = logging.getLogger("shipyard.serving.drift")

RING_SEGMENTS = 10
DRAIN_AT = 64
"""Sampled requests queued before they are counted (at once, off the per-request path)."""
DRAIN_BYTES = 16 << 20
"""Or when the queued arrays hold this many bytes (large image requests)."""
MAX_QUEUE = 4096
"""Sampled requests kept between counts; beyond it the oldest are dropped (and counted)."""
EPSILON = 1e-4
"""Floor of a bin's share in PSI: an empty bin would make it infinite."""
LABELS = ("model", "version", "feature")


@dataclass(frozen=True)
class DriftValues:
    """One feature's drift against its reference."""

    psi: float
    ks: float | None
    """None for categorical features (their order means nothing)."""
    js: float
    samples: int


def drift_statistics(
    reference: np.ndarray, window: np.ndarray, *, numeric: bool
) -> DriftValues | None:
    """PSI, KS (at bin edges) and Jensen-Shannon distance (base 2) of two count vectors
    over the same bins (NaN as a last bin); None when the window is empty."""
    from scipy.spatial.distance import jensenshannon

    n = int(window.sum())
    if n == 0 or reference.sum() == 0:
        return None
    expected = reference / reference.sum()
    actual = window / n
    p, q = np.clip(actual, EPSILON, None), np.clip(expected, EPSILON, None)
    psi = float(np.sum((p - q) * np.log(p / q)))
    ks = float(np.max(np.abs(np.cumsum(actual) - np.cumsum(expected)))) if numeric else None
    js = float(jensenshannon(actual, expected, base=2))
    return DriftValues(psi=psi, ks=ks, js=0.0 if np.isnan(js) else js, samples=n)


class _Ring:
    """Counts of one feature over the last `window` rows (up to window/RING_SEGMENTS more):
    RING_SEGMENTS full segments and the one filling now."""

    def __init__(self, bins: int, window: int) -> None:
        self.segments = np.zeros((RING_SEGMENTS + 1, bins), dtype=np.int64)
        self.segment_rows = max(1, window // RING_SEGMENTS)
        self.position = 0
        self.filled = 0

    def add(self, feature: FeatureProfile, values: np.ndarray) -> None:
        start = 0
        while start < len(values):
            take = values[start : start + self.segment_rows - self.filled]
            counts, missing = bin_counts(feature, take)
            self.segments[self.position, :-1] += counts
            self.segments[self.position, -1] += missing
            self.filled += len(take)
            start += len(take)
            if self.filled == self.segment_rows:
                self.position = (self.position + 1) % len(self.segments)
                self.segments[self.position] = 0
                self.filled = 0

    def counts(self) -> np.ndarray:
        total: np.ndarray = self.segments.sum(axis=0)
        return total


class DriftTracker:
    """The sampled window of one served version, counted on its profile's edges."""

    def __init__(self, name: str, version: int, profile: Profile, settings: DriftSettings) -> None:
        self.name, self.version = name, version
        self.label = str(version)
        self.profile = profile
        self.sample_rate = settings.sample_rate
        self.queue: deque[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] = deque()
        self.dropped = 0
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._rings = [_Ring(len(f.counts) + 1, settings.window) for f in profile.features]
        self._reference = [np.array([*f.counts, f.missing]) for f in profile.features]
        self._tensors: dict[str, list[int]] = {}
        for i, feature in enumerate(profile.features):
            self._tensors.setdefault(feature.tensor, []).append(i)

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """On the request path: keep a sampled request's arrays (references, never copied:
        decoded arrays are not written to after the batch ran)."""
        if random.random() >= self.sample_rate:
            return
        if len(self.queue) >= MAX_QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append((inputs, outputs))
        self._queued_bytes += sum(a.nbytes for a in inputs.values())
        if len(self.queue) >= DRAIN_AT or self._queued_bytes >= DRAIN_BYTES:
            self.drain()

    def drain(self) -> None:
        """Count every queued request into the window, tensor by tensor in one go."""
        with self._lock:
            taken = []
            while self.queue:
                taken.append(self.queue.popleft())
            self._queued_bytes = 0
            if not taken:
                return
            for tensor, indices in self._tensors.items():
                arrays = [
                    part[tensor]
                    for inputs, outputs in taken
                    for part in (inputs, outputs)
                    if tensor in part
                ]
                if arrays:
                    self._count(indices, arrays)

    def _count(self, indices: list[int], arrays: list[np.ndarray]) -> None:
        try:
            joined: list[np.ndarray] | None = [np.concatenate(arrays)]
        except ValueError:  # rows of different lengths (token sequences): one by one
            joined = None
        for i in indices:
            feature = self.profile.features[i]
            parts = [feature_values(feature, a) for a in (joined or arrays)]
            values = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._rings[i].add(feature, values)

    def snapshot(self) -> list[tuple[FeatureProfile, np.ndarray]]:
        """Each feature with its window counts (bins, then NaN): what processes can sum."""
        self.drain()
        with self._lock:
            return [
                (f, ring.counts())
                for f, ring in zip(self.profile.features, self._rings, strict=True)
            ]

    def values(
        self, others: Sequence[Mapping[str, np.ndarray]] = ()
    ) -> Iterator[tuple[str, DriftValues]]:
        """Each feature's drift; `others`: other workers' window counts by feature, added."""
        for (feature, counts), reference in zip(self.snapshot(), self._reference, strict=True):
            for other in others:
                extra = other.get(feature.name)
                if extra is not None and extra.shape == counts.shape:
                    counts = counts + extra
            stats = drift_statistics(reference, counts, numeric=feature.kind == "numeric")
            if stats is not None:
                yield feature.name, stats


class DriftMonitor(Collector):
    """Every served version's tracker; a Prometheus collector of their `shipyard_drift_*`."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, shared: Path | None = None
    ) -> None:
        self.trackers: dict[tuple[str, int], DriftTracker] = {}
        self.shared = shared
        """Under `--workers N`: the folder where workers share their windows (shared_drift)."""
        if registry is not None:
            registry.register(self)

    def attach(self, model: Model, settings: DriftSettings) -> DriftTracker | None:
        """Track a version being loaded when drift is on for it (on a loading thread)."""
        key = (model.name, model.version)
        if not settings.enabled:
            self.trackers.pop(key, None)
            return None
        ref = model.manifest.profile
        if ref is None:
            self.trackers.pop(key, None)
            log.info(
                "drift off for %s version %d: the package has no reference profile (add one "
                "with `shipyard profile VERSION_DIR --data FILE`)",
                model.name,
                model.version,
                extra={"model": model.name, "version": model.version},
            )
            return None
        profile = read_profile(model.path, ref, model.manifest.files[ref.file].sha256)
        tracker = DriftTracker(model.name, model.version, profile, settings)
        self.trackers = {**self.trackers, key: tracker}
        log.info(
            "drift on for %s version %d: %d feature(s), sample rate %g, window %d rows",
            model.name,
            model.version,
            len(profile.features),
            settings.sample_rate,
            settings.window,
            extra={"model": model.name, "version": model.version},
        )
        return tracker

    def detach(self, name: str, version: int) -> None:
        self.trackers = {k: t for k, t in self.trackers.items() if k != (name, version)}

    def observe(
        self,
        name: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """The data plane's hook after a successful inference; a dict lookup when off."""
        if self.trackers:
            tracker = self.trackers.get((name, version))
            if tracker is not None:
                try:
                    tracker.observe(inputs, outputs)
                except Exception:  # measuring must never fail a request that succeeded
                    self.detach(name, version)
                    log.exception(
                        "drift off for %s version %d: counting a sample failed",
                        name,
                        version,
                        extra={"model": name, "version": version},
                    )

    def describe(self) -> Iterable[Metric]:
        return list(_families())

    def share(self) -> None:
        """Under `--workers N`: write this worker's windows for the others' scrapes."""
        if self.shared is not None:
            shared_drift.dump(dict(self.trackers), self.shared)

    def collect(self) -> Iterable[Metric]:
        psi, ks, js, samples = _families()
        peers = shared_drift.others(self.shared) if self.shared is not None else []
        for key, tracker in list(self.trackers.items()):
            windows = [p[key] for p in peers if key in p]
            for feature, values in tracker.values(windows):
                labels = [tracker.name, tracker.label, feature]
                psi.add_metric(labels, values.psi)
                if values.ks is not None:
                    ks.add_metric(labels, values.ks)
                js.add_metric(labels, values.js)
                samples.add_metric(labels, values.samples)
        return [psi, ks, js, samples]


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "shipyard_drift_psi",
            "Population stability index of the sampled window against the reference profile.",
            labels=LABELS,
        ),
        GaugeMetricFamily(
            "shipyard_drift_ks",
            "Kolmogorov-Smirnov statistic (at the profile's bin edges) of a numeric feature.",
            labels=LABELS,
        ),
        GaugeMetricFamily(
            "shipyard_drift_js",
            "Jensen-Shannon distance (base 2, 0..1) of the window against the reference.",
            labels=LABELS,
        ),
        GaugeMetricFamily(
            "shipyard_drift_samples",
            "Rows in the sampled window the drift values were computed on.",
            labels=LABELS,
        ),
    )
