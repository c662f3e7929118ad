"""Padding token inputs per batch, not per request: texts of different lengths share a batch.

The tokenizer pads each request to its own length; the batcher only joins requests whose
trailing dims agree. For a graph whose token inputs have a dynamic sequence axis, and that
masks padding (it takes an attention mask), the batcher may instead pad every request's
token inputs to the batch's longest (pad id; mask and token types 0) and slice each
output that carries the sequence axis back to the request's own length. Outputs without
that axis (pooled embeddings, class scores) are split by rows only.

It is only safe when every output's shape is known beyond the batch axis: each dim after
dim 0 is fixed, or is the sequence axis at dim 1. A graph with any other dynamic output dim
(its size could depend on the padded length in a way the batcher cannot undo) is batched
per length, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from shipyard.processing.spec import TextProcessing


@dataclass(frozen=True)
class BatchPadding:
    """Which inputs the batcher may pad along dim 1, with what, and which outputs to slice."""

    values: Mapping[str, int]
    """Input name -> pad value (the tokenizer's pad id for the ids; 0 for mask and types)."""
    seq_outputs: frozenset[str]
    """Outputs whose dim 1 is the sequence axis: sliced back to each request's length."""

    def length(self, inputs: Mapping[str, np.ndarray]) -> int | None:
        """The request's sequence length, None when its inputs cannot be padded (another
        set of inputs, not [N, L], or lengths that disagree)."""
        if set(inputs) != set(self.values):
            return None
        lengths = {a.shape[1] if a.ndim == 2 else -1 for a in inputs.values()}
        if len(lengths) != 1 or (length := lengths.pop()) < 1:
            return None
        return length

    def feed(self, parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The requests' inputs padded to the longest and joined along dim 0."""
        longest = max(next(iter(p.values())).shape[1] for p in parts)
        return {
            name: np.concatenate([_pad(p[name], longest, value) for p in parts])
            for name, value in self.values.items()
        }

    def trim(self, outputs: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
        """One request's outputs with the sequence axis cut back to its own `length`."""
        return {
            name: array[:, :length] if name in self.seq_outputs and array.ndim >= 2 else array
            for name, array in outputs.items()
        }


def _pad(array: np.ndarray, length: int, value: int) -> np.ndarray:
    if array.shape[1] == length:
        return array
    return np.pad(array, ((0, 0), (0, length - array.shape[1])), constant_values=value)


def batch_padding(text: TextProcessing, model: onnx.ModelProto) -> BatchPadding | None:
    """Batch-time padding for this graph, or None where it is not safe (see the module)."""
    if text.attention_mask is None:
        return None  # nothing tells the graph which tokens are padding
    values = {text.input_ids: text.pad_id, text.attention_mask: 0}
    if text.token_type_ids is not None:
        values[text.token_type_ids] = 0
    inputs = {i.name: i for i in model.graph.input}
    symbols = set()
    for name in values:
        dims = inputs[name].type.tensor_type.shape.dim if name in inputs else []
        if len(dims) != 2 or dims[1].HasField("dim_value") or not dims[1].dim_param:
            return None  # a fixed (or unnamed) sequence axis: requests keep their own length
        symbols.add(dims[1].dim_param)
    if len(symbols) != 1 or len(inputs) != len(values):
        return None
    sequence = symbols.pop()
    seq_outputs = set()
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for index, dim in enumerate(dims[1:], start=1):
            if dim.HasField("dim_value"):
                continue
            if index == 1 and dim.dim_param == sequence:
                seq_outputs.add(output.name)
                continue
            return None  # a dynamic dim the batcher could not undo
    return BatchPadding(values=values, seq_outputs=frozenset(seq_outputs))
