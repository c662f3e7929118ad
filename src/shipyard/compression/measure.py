"""Side-by-side measurement of two ONNX models: size, speed, memory, fidelity, accuracy.

Both models are loaded in the same process and timed in alternating rounds, so drift in
machine load hits both alike; the ratios are the figures to trust, not absolute times.
"""

from __future__ import annotations

import functools
import gzip
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shipyard.compression.config import MeasureConfig
from shipyard.compression.data import Dataset
from shipyard.compression.errors import CompressionError
from shipyard.compression.machine import machine_facts
from shipyard.compression.report import ComparisonReport, Fidelity, ModelFigures, RatioSpread
from shipyard.compression.served import served_fidelity, served_labels
from shipyard.package.tensorspec import TensorSpec
from shipyard.processing.spec import Processing
from shipyard.runtime.onnxrt import choose_providers

MAX_ROUNDS = 100_000
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def measure_pair(
    baseline: Path,
    candidate: Path,
    *,
    specs: Sequence[TensorSpec],
    data: Dataset,
    settings: MeasureConfig,
    labels: tuple[str, str] = ("baseline", "candidate"),
    processing: Processing | None = None,
) -> ComparisonReport:
    """Measure both model files in one run; `data` gives fidelity/accuracy rows and inputs.

    With the package's `processing`, fidelity also compares what a client gets (labels
    after post-processing, the embedding output) and class-name labels are scored against
    the served labels."""
    batch = _batch_size(specs, settings.batch_size)
    single = _batch_size(specs, 1)
    labelled = data if data.labels is not None else None  # accuracy: every labelled row
    data = data.head(settings.max_rows)
    if batch != settings.batch_size and data.rows % batch:  # fixed batch dim: whole batches
        data = data.repeated(max(batch, data.rows - data.rows % batch))
    providers = choose_providers(settings.providers)
    sessions, rss = [], []
    outputs: list[dict[str, np.ndarray]] = []
    scored: list[dict[str, np.ndarray]] = []
    fixed = _batch_size(specs, 0) != 0
    for path in (baseline, candidate):
        before = _rss_bytes()
        session = _session(path, providers, settings)
        names = [o.name for o in session.get_outputs()]
        outputs.append(dict(zip(names, _run_all(session, data, batch), strict=True)))
        if labelled is not None:
            every = _run_labelled(session, labelled, batch if fixed else settings.batch_size)
            scored.append(dict(zip(names, every, strict=True)))
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
                accuracy=_accuracy(scored[index], labelled.labels, processing)
                if labelled
                else None,
                accuracy_rows=labelled.rows if labelled else None,
            )
        )
    found = fidelity(list(outputs[0].values()), list(outputs[1].values()))
    if processing is not None:
        served = served_fidelity(
            outputs[0], outputs[1], processing=processing, source=data.raw or "tensors"
        )
        found = found.model_copy(update={"served": served})
    return ComparisonReport(
        baseline=figures[0],
        candidate=figures[1],
        fidelity=found,
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


def _accuracy(
    outputs: dict[str, np.ndarray], labels: np.ndarray | None, processing: Processing | None
) -> float | None:
    """Top-1 accuracy by shipyard.analysis.metrics, the one code path `shipyard analyze` uses;
    class-name labels (raw data of a package with labels) against the served `label`."""
    from shipyard.analysis.metrics import accuracy, class_predictions

    predicted = None
    if labels is not None and labels.dtype.kind in "US":
        predicted = served_labels(outputs, processing)
    if labels is not None and predicted is None:
        predicted = class_predictions(list(outputs.values()))
    if labels is None or predicted is None:
        return None
    return round(accuracy(labels, predicted), 6)


def _run_labelled(session: ort.InferenceSession, data: Dataset, batch: int) -> list[np.ndarray]:
    """Outputs for every labelled row; a fixed batch dimension gets its last batch filled
    with repeated rows, whose outputs are dropped."""
    rows = data.rows
    padded = -(-rows // batch) * batch if batch != 0 else rows
    full = data if padded == rows else data.repeated(padded)
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
    return [_join(p) if p[0].ndim else p[0] for p in parts]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Batches joined along dim 0; token outputs of batches cut to different lengths
    (texts) are zero-padded along dim 1 to the longest first, alike for both models."""
    widest = max(p.shape[1] if p.ndim > 1 else 0 for p in parts)
    if any(p.ndim > 1 and p.shape[1] != widest for p in parts):
        parts = [
            np.pad(p, [(0, 0), (0, widest - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts
        ]
    return np.concatenate(parts, axis=0)


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
