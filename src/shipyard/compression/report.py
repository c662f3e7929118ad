"""Side-by-side measurement of two ONNX models: size, speed, memory, fidelity, accuracy.

Both models are loaded in the same process and timed in alternating rounds, so drift in
machine load hits both alike; the ratios are the figures to trust, not absolute times.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, computed_field

from shipyard.compression.config import Budget, MeasureConfig
from shipyard.compression.data import Dataset
from shipyard.compression.errors import CompressionError
from shipyard.compression.machine import MachineFacts, machine_facts
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.onnxrt import choose_providers

MAX_ROUNDS = 100_000
SPREAD_BLOCKS = 8
"""Interleaved rounds are cut into this many consecutive blocks; each block gives one
baseline/candidate ratio, and the ratios' min–max is the spread a speed-up must clear."""
WORSE_SPEED = 0.03
"""p50, p99 or throughput this much worse than the baseline's is flagged (3 %)."""
WORSE_MEMORY = 0.10
WORSE_MEMORY_MIB = 1.0
"""Session memory is flagged when it grew by 10 % and at least 1 MiB (RSS is noisy)."""
WORSE_COSINE = 1e-4
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelFigures(_Frozen):
    """One model's figures from a side-by-side run."""

    label: str
    file_bytes: int
    gzip_bytes: int
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_batch: int
    throughput_rows_per_s: float
    session_rss_mb: float | None
    """Growth of the process's resident memory while creating the session and running it."""
    accuracy: float | None
    accuracy_rows: int | None = None
    """Labelled rows the accuracy was computed on: all of the eval data's (None in older
    reports, which used at most `max_rows`)."""


class RatioSpread(_Frozen):
    """Candidate-vs-baseline speed ratios (above 1 = candidate faster), one per block of
    interleaved rounds: the median is the figure, min–max how far it moved while measuring."""

    ratios: list[float]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def median(self) -> float:
        return round(float(np.median(self.ratios)), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def low(self) -> float:
        return round(min(self.ratios), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def high(self) -> float:
        return round(max(self.ratios), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def significant(self) -> bool:
        """True when every block agrees on the direction: the spread does not cover 1.0."""
        return bool(self.ratios) and (self.low > 1.0 or self.high < 1.0)

    def describe(self) -> str:
        verdict = "" if self.significant else ", not significant"
        return f"{self.median:.2f}× ({self.low:.2f}–{self.high:.2f}{verdict})"

    @classmethod
    def from_times(
        cls, baseline: Sequence[float], candidate: Sequence[float], blocks: int = SPREAD_BLOCKS
    ) -> RatioSpread:
        """Ratios of the blocks' median times (baseline / candidate) of interleaved runs."""
        count = min(len(baseline), len(candidate))
        edges = np.linspace(0, count, min(blocks, count) + 1).astype(int)
        ratios = []
        for start, stop in itertools.pairwise(edges):
            cand = float(np.median(candidate[start:stop]))
            ratios.append(round(float(np.median(baseline[start:stop])) / cand, 4) if cand else 0.0)
        return cls(ratios=ratios)


class Fidelity(_Frozen):
    """How closely the candidate's outputs follow the baseline's, row by row."""

    rows: int
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None


class ComparisonReport(_Frozen):
    baseline: ModelFigures
    candidate: ModelFigures
    fidelity: Fidelity
    data: str
    """Where the inputs came from: an eval/calibration file, or 'synthetic'."""
    machine: MachineFacts
    settings: MeasureConfig
    latency_spread: RatioSpread | None = None
    """p50 speed-up at batch 1 per block of interleaved rounds (None in older reports)."""
    throughput_spread: RatioSpread | None = None
    """Throughput ratio per block of interleaved rounds (None in older reports)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def size_ratio(self) -> float:
        """×smaller on disk (baseline size / candidate size)."""
        return _ratio(self.baseline.file_bytes, self.candidate.file_bytes)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gzip_ratio(self) -> float:
        return _ratio(self.baseline.gzip_bytes, self.candidate.gzip_bytes)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def latency_speedup(self) -> float:
        """Baseline p50 / candidate p50 at batch 1; above 1 means the candidate is faster."""
        return _ratio(self.baseline.latency_p50_ms, self.candidate.latency_p50_ms)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def throughput_ratio(self) -> float:
        return _ratio(self.candidate.throughput_rows_per_s, self.baseline.throughput_rows_per_s)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy_drop(self) -> float | None:
        if self.baseline.accuracy is None or self.candidate.accuracy is None:
            return None
        return round(self.baseline.accuracy - self.candidate.accuracy, 6)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def worse(self) -> list[str]:
        """The figures in which the candidate is worse than the baseline, beyond noise:
        p50, p99, throughput, session memory, size, fidelity (see the WORSE_* limits)."""
        b, c, f = self.baseline, self.candidate, self.fidelity
        found = []
        if c.latency_p50_ms > b.latency_p50_ms * (1 + WORSE_SPEED):
            found.append("latency p50")
        if c.latency_p99_ms > b.latency_p99_ms * (1 + WORSE_SPEED):
            found.append("latency p99")
        if c.throughput_rows_per_s < b.throughput_rows_per_s * (1 - WORSE_SPEED):
            found.append("throughput")
        if (
            b.session_rss_mb is not None
            and c.session_rss_mb is not None
            and c.session_rss_mb > b.session_rss_mb * (1 + WORSE_MEMORY)
            and c.session_rss_mb - b.session_rss_mb >= WORSE_MEMORY_MIB
        ):
            found.append("session memory")
        if c.file_bytes > b.file_bytes:
            found.append("size")
        if c.gzip_bytes > b.gzip_bytes:
            found.append("gzip size")
        if f.mean_cosine < 1 - WORSE_COSINE:
            found.append("mean cosine")
        if f.top1_agreement is not None and f.top1_agreement < 1.0:
            found.append("top-1 agreement")
        drop = self.accuracy_drop
        if drop is not None and drop > 0:
            found.append("accuracy")
        return found

    def violations(self, budget: Budget) -> list[str]:
        """Why the candidate is over `budget`, each reason with the measured value, the limit
        and how far it missed (e.g. "accuracy drop 0.034 exceeds max-drop 0.01 by 0.024");
        empty when it is within."""
        found = []
        drop = self.accuracy_drop
        if budget.max_accuracy_drop is not None:
            limit = budget.max_accuracy_drop
            if drop is None:
                found.append(
                    f"accuracy drop cannot be measured against max-drop {limit:.4g}: an accuracy "
                    "budget needs eval data with labels (y) and a class or score output"
                )
            elif drop > limit + 1e-12:
                found.append(
                    f"accuracy drop {drop:.4g} exceeds max-drop {limit:.4g} by {drop - limit:.4g}"
                )
        cosine = self.fidelity.mean_cosine
        if budget.min_mean_cosine is not None and cosine < budget.min_mean_cosine:
            limit = budget.min_mean_cosine
            found.append(
                f"mean cosine {cosine:.6g} is below min-cosine {limit:.6g} by {limit - cosine:.4g}"
            )
        agreement = self.fidelity.top1_agreement
        if budget.min_top1_agreement is not None:
            limit = budget.min_top1_agreement
            if agreement is None:
                found.append(
                    f"top-1 agreement cannot be measured against min top-1 agreement {limit:.4g}: "
                    "the outputs are not class scores"
                )
            elif agreement < limit:
                found.append(
                    f"top-1 agreement {agreement:.4g} is below min top-1 agreement {limit:.4g} "
                    f"by {limit - agreement:.4g}"
                )
        return found


def measure_pair(
    baseline: Path,
    candidate: Path,
    *,
    specs: Sequence[TensorSpec],
    data: Dataset,
    settings: MeasureConfig,
    labels: tuple[str, str] = ("baseline", "candidate"),
) -> ComparisonReport:
    """Measure both model files in one run; `data` gives fidelity/accuracy rows and inputs."""
    batch = _batch_size(specs, settings.batch_size)
    single = _batch_size(specs, 1)
    labelled = data if data.labels is not None else None  # accuracy: every labelled row
    data = data.head(settings.max_rows)
    if batch != settings.batch_size and data.rows % batch:  # fixed batch dim: whole batches
        data = Dataset(data.tiled(max(batch, data.rows - data.rows % batch)), None, data.source)
    providers = choose_providers(settings.providers)
    sessions, rss, outputs = [], [], []
    scored: list[list[np.ndarray]] = []
    fixed = _batch_size(specs, 0) != 0
    for path in (baseline, candidate):
        before = _rss_bytes()
        session = _session(path, providers, settings)
        outputs.append(_run_all(session, data, batch))
        if labelled is not None:
            scored.append(_run_labelled(session, labelled, batch if fixed else settings.batch_size))
        after = _rss_bytes()
        sessions.append(session)
        rss.append(None if before is None or after is None else max(after - before, 0) / 2**20)
    warmup, least = settings.warmup_runs, settings.min_seconds
    latency = _alternating(sessions, data.tiled(single), settings.latency_runs, warmup, least)
    bulk = _alternating(sessions, data.tiled(batch), settings.throughput_runs, warmup, least)
    figures = []
    for index, path in enumerate((baseline, candidate)):
        times = latency[index]
        stat = path.stat()
        figures.append(
            ModelFigures(
                label=labels[index],
                file_bytes=stat.st_size,
                gzip_bytes=gzip_size(str(path.resolve()), stat.st_size, stat.st_mtime_ns),
                latency_p50_ms=round(float(np.percentile(times, 50)) * 1e3, 4),
                latency_p99_ms=round(float(np.percentile(times, 99)) * 1e3, 4),
                throughput_batch=batch,
                throughput_rows_per_s=round(batch / float(np.median(bulk[index])), 2),
                session_rss_mb=None if rss[index] is None else round(rss[index] or 0.0, 2),
                accuracy=_accuracy(scored[index], labelled.labels) if labelled else None,
                accuracy_rows=labelled.rows if labelled else None,
            )
        )
    return ComparisonReport(
        baseline=figures[0],
        candidate=figures[1],
        fidelity=fidelity(outputs[0], outputs[1]),
        data=data.source,
        machine=machine_facts(tuple(sessions[1].get_providers())),
        settings=settings,
        latency_spread=RatioSpread.from_times(latency[0], latency[1]),
        throughput_spread=RatioSpread.from_times(bulk[0], bulk[1]),
    )


def fidelity(base: list[np.ndarray], cand: list[np.ndarray]) -> Fidelity:
    """Row-wise cosine over all float outputs, max |diff|, and top-1 agreement."""
    rows = int(base[0].shape[0]) if base and base[0].ndim else 1
    flat_b = [_rows(b, rows) for b in base if b.dtype.kind == "f"]
    flat_c = [_rows(c, rows) for c, b in zip(cand, base, strict=True) if b.dtype.kind == "f"]
    if flat_b:
        b = np.concatenate(flat_b, axis=1)
        c = np.concatenate(flat_c, axis=1)
        max_abs = float(np.max(np.abs(b - c))) if b.size else 0.0
        cosines = cosine_rows(b, c)
    else:
        max_abs, cosines = 0.0, np.ones(rows)
    agreement = None
    for b_out, c_out in zip(base, cand, strict=True):
        if b_out.dtype.kind == "f" and b_out.ndim == 2 and b_out.shape[1] > 1:
            agreement = float(np.mean(b_out.argmax(axis=1) == c_out.argmax(axis=1)))
            break
        if b_out.dtype.kind in "iu" and b_out.ndim == 1:
            agreement = float(np.mean(b_out == c_out))
            break
    return Fidelity(
        rows=rows,
        max_abs_diff=round(max_abs, 8),
        mean_cosine=round(float(np.mean(cosines)), 6),
        min_cosine=round(float(np.min(cosines)), 6),
        top1_agreement=None if agreement is None else round(agreement, 6),
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per row; two all-zero rows count as identical."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dot = np.sum(a64 * b64, axis=1)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    both_zero = (np.linalg.norm(a64, axis=1) == 0) & (np.linalg.norm(b64, axis=1) == 0)
    result: np.ndarray = np.where(both_zero, 1.0, dot / np.maximum(norms, 1e-30))
    return result


def _accuracy(outputs: list[np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy by shipyard.analysis.metrics, the one code path `shipyard analyze` uses."""
    from shipyard.analysis.metrics import accuracy, class_predictions

    predicted = None if labels is None else class_predictions(outputs)
    if labels is None or predicted is None:
        return None
    return round(accuracy(labels, predicted), 6)


def _run_labelled(session: ort.InferenceSession, data: Dataset, batch: int) -> list[np.ndarray]:
    """Outputs for every labelled row; a fixed batch dimension gets its last batch filled
    with repeated rows, whose outputs are dropped."""
    rows = data.rows
    padded = -(-rows // batch) * batch if batch != 0 else rows
    full = data if padded == rows else Dataset(data.tiled(padded), None, data.source)
    return [out[:rows] if out.ndim else out for out in _run_all(session, full, batch)]


def _rows(array: np.ndarray, rows: int) -> np.ndarray:
    return array.astype(np.float64).reshape(rows, -1)


def _session(path: Path, providers: list[str], settings: MeasureConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.graph_optimization_level = _LEVELS[settings.graph_optimization]
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise CompressionError(
            "measure", f"{path.name}: ONNX Runtime cannot load it ({exc})"
        ) from exc


def _run_all(session: ort.InferenceSession, data: Dataset, batch: int) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = []
    for feed in data.batches(batch):
        result = session.run(None, feed)
        if not parts:
            parts = [[] for _ in result]
        for bucket, value in zip(parts, result, strict=True):
            bucket.append(np.asarray(value))
    return [np.concatenate(p, axis=0) if p[0].ndim else p[0] for p in parts]


def _alternating(
    sessions: list[ort.InferenceSession],
    feed: dict[str, np.ndarray],
    runs: int,
    warmup: int,
    min_seconds: float,
) -> list[list[float]]:
    """Time each session in alternating rounds (A B, B A, …): at least `runs` rounds and
    `min_seconds`; round i of one session ran next to round i of the other."""
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(warmup):
        for session in sessions:
            session.run(None, feed)
    deadline = time.perf_counter() + min_seconds
    rounds = 0
    while rounds < runs or (time.perf_counter() < deadline and rounds < MAX_ROUNDS):
        rounds += 1
        order = list(enumerate(sessions))
        for index, session in order if rounds % 2 else reversed(order):  # ABBA: no order bias
            start = time.perf_counter()
            session.run(None, feed)
            times[index].append(time.perf_counter() - start)
    return times


def _batch_size(specs: Sequence[TensorSpec], wanted: int) -> int:
    fixed = {s.shape[0] for s in specs if s.shape and s.shape[0] != -1}
    return fixed.pop() if len(fixed) == 1 else wanted


@functools.lru_cache(maxsize=16)
def gzip_size(path: str, size: int, mtime_ns: int) -> int:
    """gzip -6 size of a file; cached by (path, size, mtime) since a parent is measured
    once per candidate and compressing a 90 MB model takes seconds."""
    del size, mtime_ns  # part of the cache key only
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6, mtime=0))


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0
