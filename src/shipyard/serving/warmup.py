"""Warm-up and the batching decision for a version before it takes traffic.

Warm-up runs the version's stored sample (the inputs it was checked with at pack time) or,
without one, inputs synthesized from the graph at several sizes. A failure on the user's own
stored sample means the version cannot serve here: it is refused. A failure on made-up
inputs says nothing about real requests, so the version serves anyway with a warning,
unless its model.toml asks for `warmup = "strict"`.

Batching joins requests along dim 0, which is only right when dim 0 is a batch axis for
every input and output. `batching_plan` refuses signatures where it is not (a scalar
sample-rate input, a recurrent state with the batch on axis 1, a fixed batch of 1) and, on
inputs that run, checks that two different rows give the same answers together as alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shipyard.errors import RuntimeBackendError
from shipyard.model import Model
from shipyard.package.tensorspec import TensorSpec
from shipyard.package.warmup import read_sample
from shipyard.runtime.synthesis import candidates, describe_inputs, first_that_runs

log = logging.getLogger("shipyard.serving.warmup")

_ATOL, _RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class WarmupResult:
    """What warm-up ran, and the inputs that worked (None when nothing ran)."""

    feed: dict[str, np.ndarray] | None
    source: str
    warning: str | None = None


def warm_up(model: Model, *, strict: bool) -> WarmupResult:
    """Run the stored sample, else synthesized inputs; raise only when the version must not serve."""
    entry = model.manifest.warmup
    if entry is not None:
        feed = read_sample(model.path, entry)
        source = "its stored synthesized sample" if entry.synthesized else "its stored sample"
        try:
            model.runtime.infer(feed)
        except Exception as exc:
            if entry.synthesized and not strict:
                return WarmupResult(None, source, f"warm-up on {source} failed ({exc})")
            raise RuntimeBackendError(f"warm-up on {source} failed ({exc})") from exc
        return WarmupResult(feed, source)
    source = "synthesized inputs"
    try:
        feed, _ = first_that_runs(model.runtime.infer, candidates(model.inputs, model.graph_hints))
    except Exception as exc:
        message = (
            f"warm-up on {source} failed ({exc}); repack with --sample-input holding real "
            f"values for {describe_inputs(model.inputs)} so the server warms up with them"
        )
        if strict:
            raise RuntimeBackendError(message) from exc
        return WarmupResult(None, source, message + "; serving it anyway (not strict)")
    return WarmupResult(feed, source)


def static_batching_problem(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> str | None:
    """Why dim 0 cannot be a batch axis by the signature alone, or None."""
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if not spec.shape:
                return f"{kind} {spec.name!r} is a scalar (it cannot be stacked per request)"
            if spec.shape[0] != -1:
                return (
                    f"{kind} {spec.describe()} has a fixed first dim, so dim 0 is not a batch axis"
                )
    return None


def batching_problem(model: Model, feed: Mapping[str, np.ndarray] | None) -> str | None:
    """Why requests of this model must not be batched along dim 0, or None when they may."""
    problem = static_batching_problem(model.inputs, model.outputs)
    if problem is not None or feed is None:
        return problem
    first, second = _two_rows(feed)
    try:
        alone = [model.runtime.infer(first), model.runtime.infer(second)]
        together = model.runtime.infer({n: np.concatenate([first[n], second[n]]) for n in first})
    except Exception as exc:
        return f"two requests joined along dim 0 do not run ({exc})"
    for name, joined in together.items():
        rows = [a[name] for a in alone]
        if joined.ndim == 0 or joined.shape[0] != sum(r.shape[0] for r in rows if r.ndim):
            return f"output {name!r} does not follow dim 0 when two requests are joined"
        if not _close(joined, np.concatenate(rows)):
            return (
                f"output {name!r} changes when two requests are joined along dim 0 (dim 0 is "
                "not an independent batch axis for this model)"
            )
    return None


def _two_rows(
    feed: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two different one-row feeds from a working feed (its rows 0 and 1, else a variant)."""
    rows = {a.shape[0] for a in feed.values()}
    if rows and min(rows) >= 2:
        return (
            {n: a[:1] for n, a in feed.items()},
            {n: a[1:2] for n, a in feed.items()},
        )
    first = {n: a[:1] for n, a in feed.items()}
    return first, {n: _variant(a) for n, a in first.items()}


def _variant(array: np.ndarray) -> np.ndarray:
    """Other valid values of the same shape: floats nudged, integers rolled (stay in range)."""
    if array.dtype.kind == "f":
        scale = float(np.abs(array).mean()) or 1.0
        return (array + 0.1 * scale).astype(array.dtype)
    if array.ndim >= 2 and array.dtype.kind in "iub":
        return np.roll(array, 1, axis=-1)
    return array.copy()


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    if got.dtype.kind in "fc" or want.dtype.kind in "fc":
        a, b = got.astype(np.float64), want.astype(np.float64)
        return bool(np.allclose(a, b, atol=_ATOL, rtol=_RTOL, equal_nan=True))
    return bool(np.array_equal(got, want))
