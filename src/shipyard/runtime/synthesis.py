"""Inputs made up from what an ONNX graph says, for trial runs and warm-ups without a sample.

Random values are wrong for many real models: token ids index an embedding table, masks
must be ones, token types stay below a vocabulary of two, a sample-rate scalar must be one
of the values the graph compares it with, and spatial dims must be multiples of a stride.
So the graph is read first:

- an integer input that reaches a ``Gather`` as its indices (directly or through shape-only
  ops such as Cast/Unsqueeze/Reshape) stays below the row count of the gathered table;
- an input compared (``Equal``) with a constant takes that constant;
- inputs named like masks are ones, token types / segment ids zeros, position ids 0..n-1;
- dims sharing a symbolic name share one size; the first dynamic dim of each input is the
  batch (dim 0, or dim 1 of a recurrent state shaped [layers, batch, hidden]).

`candidates` yields several feeds with different dynamic sizes, so a caller can retry when
a size does not fit the model (a convolution stack needs at least 32 pixels, say).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from shipyard.package.tensorspec import TensorSpec

# Ops through which an index tensor keeps its values (only its shape or dtype changes).
_PASS_THROUGH = frozenset(
    {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}
)
# (batch size, size of other dynamic dims) tried in order.
_SIZES: tuple[tuple[int, int], ...] = ((1, 8), (2, 32), (1, 64), (1, 512), (1, 16), (1, 1))

_MASK_WORDS = ("mask",)
_ZERO_WORDS = ("token_type", "segment", "type_ids")
_POSITION_WORDS = ("position_ids",)


@dataclass(frozen=True)
class InputHints:
    """What the graph says about the values one input may take."""

    upper: int | None = None
    """Exclusive upper bound for integer values (rows of the embedding it indexes)."""
    constants: tuple[float, ...] = ()
    """Values the graph compares this input with."""
    dim_names: tuple[str, ...] = ()
    """Symbolic dim names ('' where unnamed)."""


def graph_hints(model: onnx.ModelProto) -> dict[str, InputHints]:
    """Per graph input: index bounds, compared constants and dim names."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if int(np.prod(init.dims)) <= 16 and init.data_location != onnx.TensorProto.EXTERNAL:
            constants[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if (
                    attr.name == "value"
                    and attr.type == onnx.AttributeProto.TENSOR
                    and attr.t.data_location != onnx.TensorProto.EXTERNAL
                ):
                    value = numpy_helper.to_array(attr.t)
                    shapes[node.output[0]] = tuple(value.shape)
                    if value.size <= 16:
                        constants[node.output[0]] = value
    hints: dict[str, InputHints] = {}
    for value in graph.input:
        if value.name in shapes and value.name not in constants:
            continue  # an initializer listed as an input
        upper: int | None = None
        compared: list[float] = []
        seen: set[str] = set()
        frontier = [value.name]
        while frontier:
            current = frontier.pop()
            if current in seen or len(seen) > 64:
                continue
            seen.add(current)
            for node in consumers.get(current, []):
                if node.op_type in _PASS_THROUGH and node.input[0] == current:
                    frontier.extend(node.output)
                elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == current:
                    table = shapes.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if table and len(table) > axis and table[axis] > 0:
                        rows = int(table[axis])
                        upper = rows if upper is None else min(upper, rows)
                elif node.op_type == "Equal":
                    for other in node.input:
                        if other != current and other in constants:
                            compared.extend(float(x) for x in constants[other].ravel())
        hints[value.name] = InputHints(
            upper=upper, constants=tuple(dict.fromkeys(compared)), dim_names=_dim_names(value)
        )
    return hints


def _dim_names(value: onnx.ValueInfoProto) -> tuple[str, ...]:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return ()
    return tuple(d.dim_param if d.HasField("dim_param") else "" for d in tensor.shape.dim)


def candidates(
    specs: Sequence[TensorSpec], hints: dict[str, InputHints], *, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Feeds to try, one per size combination in `_SIZES`."""
    for batch, other in _SIZES:
        yield synthesize_feed(specs, hints, batch=batch, other=other, seed=seed)


def synthesize_feed(
    specs: Sequence[TensorSpec],
    hints: dict[str, InputHints],
    *,
    batch: int = 1,
    other: int = 8,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One feed: dynamic dim 0 = `batch`, other dynamic dims `other` (shared names agree)."""
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        hint = hints.get(spec.name, InputHints())
        shape = []
        # the batch is dim 0, or for a recurrent state such as [layers, batch, hidden] the
        # first dynamic dim after fixed ones
        batch_axis = next((a for a, d in enumerate(spec.shape) if d == -1), None)
        for axis, dim in enumerate(spec.shape):
            if dim != -1:
                shape.append(dim)
                continue
            name = hint.dim_names[axis] if axis < len(hint.dim_names) else ""
            default = batch if axis == batch_axis else other
            if name:
                shape.append(sizes.setdefault(name, default))
            else:
                shape.append(default)
        feed[spec.name] = _values(spec, hint, tuple(shape), rng)
    return feed


def _values(
    spec: TensorSpec, hint: InputHints, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    lowered = spec.name.lower()
    if spec.dtype == "str":
        count = int(np.prod(shape))
        return np.array([f"s{i}" for i in range(count)], dtype=object).reshape(shape)
    if hint.constants:
        return np.full(shape, hint.constants[0]).astype(spec.dtype)
    if spec.dtype == "bool":
        if any(w in lowered for w in _MASK_WORDS):
            return np.ones(shape, dtype=bool)
        return rng.integers(0, 2, size=shape).astype(bool)
    if any(w in lowered for w in _MASK_WORDS):
        return np.ones(shape, dtype=spec.dtype)
    if any(w in lowered for w in _ZERO_WORDS):
        return np.zeros(shape, dtype=spec.dtype)
    if any(w in lowered for w in _POSITION_WORDS) and shape:
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
    if spec.dtype.startswith(("int", "uint")):
        upper = hint.upper if hint.upper is not None else 8
        return rng.integers(0, max(upper, 1), size=shape).astype(spec.dtype)
    return rng.standard_normal(size=shape).astype(spec.dtype)


def first_that_runs(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: Iterable[dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The first feed `run` accepts, with its outputs; re-raises the first failure otherwise."""
    first: Exception | None = None
    for feed in feeds:
        try:
            return feed, run(feed)
        except Exception as exc:  # try the next size; the first error is the telling one
            first = first or exc
    assert first is not None, "no candidate feeds"
    raise first


def describe_inputs(specs: Sequence[TensorSpec]) -> str:
    """`input_ids int64[?, ?], attention_mask int64[?, ?]` for messages."""
    return ", ".join(
        f"{s.name} {s.dtype}[{', '.join('?' if d == -1 else str(d) for d in s.shape)}]"
        for s in specs
    )
