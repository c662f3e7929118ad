"""Reference profiles: per-feature histograms of the data a version was built for.

A profile is the yardstick the server measures drift against (see shipyard.serving.drift
and docs/monitoring.md). It is stored in the version as `profile/reference.json`, listed and
hashed in the manifest like every file, and recorded in the manifest's `profile` field.

Features, one per what can be compared row by row:

- a tensor with one value per row ([N] or [N, 1]) is one feature named after the tensor;
- a table ([N, F], F <= MAX_COLUMNS) gives one feature per column, `X[3]`;
- an image ([N, C, H, W] or [N, H, W, C] with C <= 4, float) gives the per-row mean of each
  channel, `pixels:mean[0]`, and the per-row standard deviation, `pixels:std`;
- other float tensors (embeddings, sequences) give the per-row mean and std, `emb:mean`,
  `emb:std`; other integer tensors (token ids) the per-row count of non-zero values
  (the sequence length under zero padding), `input_ids:nonzero`.

The model's outputs are profiled by the same rules (a label [N] gives label frequencies,
probabilities [N, K] a score histogram per class), so drift in what it answers shows too.

Numeric features are counted on fixed bin edges taken from the reference quantiles (a
feature with at most `bins` distinct values gets one bin per value), with open tails and a
separate count of NaN; string and bool features keep their `top_k` most frequent values
plus "other". Counts on fixed edges are mergeable: adding the counts of two profiles made
on the same edges equals the profile of the concatenated data. A mergeable quantile sketch
(KLL, Apache DataSketches) was considered: drift statistics need counts on shared bins
anyway, which a sketch only approximates, and histograms stay plain JSON without a
compiled dependency.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import UsageError
from shipyard.package.tensorspec import TensorSpec

PROFILE_FILE = "profile/reference.json"
PROFILE_FORMAT = 1
DEFAULT_BINS = 10
DEFAULT_TOP_K = 32
MAX_COLUMNS = 64
"""Tables wider than this are reduced to per-row statistics (keeps metric series bounded)."""
MAX_CHANNELS = 4
OTHER = "other"
CHUNK_ROWS = 1024
"""Rows per model run when computing the outputs on the reference data."""

Reduction = Literal["value", "column", "channel_mean", "row_mean", "row_std", "nonzero"]


class ProfileRef(BaseModel):
    """Recorded in the manifest: where the profile is and what it covers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = PROFILE_FILE
    rows: int = Field(ge=1)
    features: int = Field(ge=0)


class FeatureProfile(BaseModel):
    """Counts of one feature; `counts` has len(edges) + 1 bins (numeric) or
    len(values) + 1 (categorical, "other" last)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tensor: str
    source: Literal["input", "output"]
    reduction: Reduction
    index: int | None = None
    """The column (or channel) taken, for `column` and `channel_mean`."""
    axis: int | None = None
    """The channel axis, for `channel_mean`."""
    kind: Literal["numeric", "categorical"]
    edges: list[float] = Field(default_factory=list)
    values: list[str] = Field(default_factory=list)
    counts: list[int]
    missing: int = 0
    """NaN values (numeric), kept apart from the bins."""
    sum: float = 0.0
    sum_sq: float = 0.0
    """Sums over the finite values (numeric): mean and std stay mergeable."""

    @property
    def total(self) -> int:
        return sum(self.counts) + self.missing

    def empty(self) -> FeatureProfile:
        return self.model_copy(
            update={"counts": [0] * len(self.counts), "missing": 0, "sum": 0.0, "sum_sq": 0.0}
        )


class Profile(BaseModel):
    """A version's reference profile (`profile/reference.json`)."""

    model_config = ConfigDict(extra="forbid")

    format: int = PROFILE_FORMAT
    rows: int = Field(ge=0)
    bins: int = Field(ge=2)
    top_k: int = Field(ge=1)
    features: list[FeatureProfile]
    skipped: dict[str, str] = Field(default_factory=dict)
    """Tensors not profiled, with the reason."""

    def empty(self) -> Profile:
        """The same features and edges with zero counts (to count other data on)."""
        return self.model_copy(update={"rows": 0, "features": [f.empty() for f in self.features]})

    def count(self, arrays: Mapping[str, np.ndarray]) -> Profile:
        """A copy with the rows of `arrays` (tensor name -> array) added on the same edges."""
        rows = row_count(arrays, {f.tensor for f in self.features})
        features = []
        for feature in self.features:
            if feature.tensor not in arrays:
                features.append(feature)
                continue
            values = feature_values(feature, arrays[feature.tensor])
            features.append(_added(feature, values))
        return self.model_copy(update={"rows": self.rows + rows, "features": features})

    def merge(self, other: Profile) -> Profile:
        """Counts added feature by feature; both must have been counted on the same edges."""
        if [_layout(f) for f in self.features] != [_layout(f) for f in other.features]:
            raise UsageError("profiles differ in features or bin edges; they cannot be merged")
        merged = [
            a.model_copy(
                update={
                    "counts": [x + y for x, y in zip(a.counts, b.counts, strict=True)],
                    "missing": a.missing + b.missing,
                    "sum": a.sum + b.sum,
                    "sum_sq": a.sum_sq + b.sum_sq,
                }
            )
            for a, b in zip(self.features, other.features, strict=True)
        ]
        return self.model_copy(update={"rows": self.rows + other.rows, "features": merged})

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


def build_profile(
    inputs: Sequence[TensorSpec],
    data: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[TensorSpec] = (),
    output_data: Mapping[str, np.ndarray] | None = None,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
) -> Profile:
    """Profile reference inputs (and the model's outputs on them) on edges taken from them."""
    if bins < 2:
        raise UsageError(f"bins = {bins}: use at least 2")
    rows = row_count(data, [s.name for s in inputs if s.batched])
    if rows == 0:
        raise UsageError("reference data has no rows; pass the data the model was trained on")
    features: list[FeatureProfile] = []
    skipped: dict[str, str] = {}
    tensors = [(s, data, "input") for s in inputs]
    tensors += [(s, output_data or {}, "output") for s in outputs if output_data]
    input_names = {s.name for s in inputs}
    for spec, arrays, source in tensors:
        if spec.name not in arrays:
            skipped[spec.name] = "not in the reference data"
            continue
        array = np.asarray(arrays[spec.name])
        planned = plan_features(spec, array, source=source)  # type: ignore[arg-type]
        if isinstance(planned, str):
            skipped[spec.name] = planned
            continue
        for feature in planned:
            if source == "output" and feature.name.split("[")[0].split(":")[0] in input_names:
                feature = feature.model_copy(update={"name": f"output:{feature.name}"})
            values = feature_values(feature, array)
            features.append(_added(_with_bins(feature, values, bins, top_k), values))
    return Profile(rows=rows, bins=bins, top_k=top_k, features=features, skipped=skipped)


def plan_features(
    spec: TensorSpec, array: np.ndarray, *, source: Literal["input", "output"]
) -> list[FeatureProfile] | str:
    """The features of one tensor (see the module docstring), or why it is not profiled."""
    if array.ndim == 0 or not spec.batched:
        return "no batch dimension: no rows to compare"
    kind: Literal["numeric", "categorical"] = (
        "categorical" if array.dtype.kind in "OUSb" else "numeric"
    )
    per_row = int(np.prod(array.shape[1:], dtype=np.int64))
    base = {"tensor": spec.name, "source": source, "kind": kind, "counts": []}

    def feature(name: str, reduction: Reduction, **extra: int) -> FeatureProfile:
        return FeatureProfile(name=name, reduction=reduction, **base, **extra)  # type: ignore[arg-type]

    if per_row == 1:
        return [feature(spec.name, "value")]
    if array.ndim == 2 and per_row <= MAX_COLUMNS:
        return [feature(f"{spec.name}[{j}]", "column", index=j) for j in range(per_row)]
    if kind == "categorical":
        return f"{per_row} string/bool values per row: too many to profile one by one"
    if array.dtype.kind in "iu":
        return [feature(f"{spec.name}:nonzero", "nonzero")]
    planned = [feature(f"{spec.name}:mean", "row_mean"), feature(f"{spec.name}:std", "row_std")]
    if array.ndim == 4:
        axis = 1 if array.shape[1] <= MAX_CHANNELS else 3 if array.shape[3] <= MAX_CHANNELS else 0
        if axis:
            planned = [
                feature(f"{spec.name}:mean[{c}]", "channel_mean", index=c, axis=axis)
                for c in range(array.shape[axis])
            ] + planned[1:]
    return planned


def feature_values(feature: FeatureProfile, array: np.ndarray) -> np.ndarray:
    """The 1-D values of `feature`, one per row of `array`."""
    if feature.reduction == "value":
        return array.reshape(-1)
    if feature.reduction == "column":
        return array.reshape(array.shape[0], -1)[:, feature.index]
    rows = array.reshape(array.shape[0], -1)
    values: np.ndarray
    if feature.reduction == "nonzero":
        values = np.asarray(np.count_nonzero(rows, axis=1))
    elif feature.reduction == "channel_mean":
        channel = np.take(array, feature.index or 0, axis=feature.axis or 1)
        values = channel.reshape(array.shape[0], -1).mean(axis=1, dtype=np.float64)
    elif feature.reduction == "row_mean":
        values = rows.mean(axis=1, dtype=np.float64)
    else:
        values = rows.std(axis=1, dtype=np.float64)
    return values


def bin_counts(feature: FeatureProfile, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts of `values` in the feature's bins, and how many were NaN."""
    nbins = len(feature.counts)
    if feature.kind == "categorical":
        index = {v: i for i, v in enumerate(feature.values)}
        uniq, hits = np.unique(_as_text(values), return_counts=True)
        counts = np.zeros(nbins, dtype=np.int64)
        for value, hit in zip(uniq.tolist(), hits.tolist(), strict=True):
            counts[index.get(value, nbins - 1)] += hit
        return counts, 0
    numbers = np.asarray(values, dtype=np.float64)
    slots = np.searchsorted(np.asarray(feature.edges), numbers, side="right")
    counts = np.bincount(slots, minlength=nbins)
    missing = int(np.count_nonzero(np.isnan(numbers))) if numbers.dtype.kind == "f" else 0
    if missing:
        counts[nbins - 1] -= missing  # NaN sorts past every edge, into the last bin
    return counts, missing


def _with_bins(
    feature: FeatureProfile, values: np.ndarray, bins: int, top_k: int
) -> FeatureProfile:
    if feature.kind == "categorical":
        common = Counter(_as_text(values).tolist()).most_common(top_k)
        kept = sorted(v for v, _ in common)
        return feature.model_copy(update={"values": kept, "counts": [0] * (len(kept) + 1)})
    numbers = np.asarray(values, dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    uniq = np.unique(finite)
    if len(uniq) == 0:
        edges: list[float] = []
    elif len(uniq) <= bins:
        # one bin per value seen, and empty bins on both sides for values never seen
        edges = [*uniq.tolist(), float(np.nextafter(uniq[-1], np.inf))]
    else:
        quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique(quantiles).tolist()
    return feature.model_copy(update={"edges": edges, "counts": [0] * (len(edges) + 1)})


def _added(feature: FeatureProfile, values: np.ndarray) -> FeatureProfile:
    counts, missing = bin_counts(feature, values)
    update: dict[str, object] = {
        "counts": [a + int(b) for a, b in zip(feature.counts, counts, strict=True)],
        "missing": feature.missing + missing,
    }
    if feature.kind == "numeric":
        numbers = np.asarray(values, dtype=np.float64)
        finite = numbers[np.isfinite(numbers)]
        update["sum"] = feature.sum + float(finite.sum())
        update["sum_sq"] = feature.sum_sq + float(np.square(finite).sum())
    return feature.model_copy(update=update)


def _layout(feature: FeatureProfile) -> tuple[object, ...]:
    return (feature.name, feature.reduction, feature.index, feature.edges, feature.values)


def row_count(arrays: Mapping[str, np.ndarray], names: Iterable[str] | None = None) -> int:
    """Rows along dim 0 of the tensors `names` (default: all), which must agree."""
    chosen = arrays if names is None else {n: arrays[n] for n in names if n in arrays}
    counts = {np.asarray(a).shape[0] for a in chosen.values() if np.ndim(a)}
    if len(counts) > 1:
        raise UsageError(f"tensors have different row counts {sorted(counts)}; align them")
    return counts.pop() if counts else 0


def _as_text(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "U":
        return array
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array]
    return np.array(flat, dtype=np.str_)
