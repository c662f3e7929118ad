"""The input and output TensorSpecs of an ONNX graph, and its default opset."""

from __future__ import annotations

import onnx

from shipyard.errors import UnsupportedModelError
from shipyard.package.dtypes import BY_ONNX
from shipyard.package.tensorspec import TensorSpec


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModelError(
            f"graph value {value.name!r} is a {kind}, not a tensor; Shipyard serves tensor "
            "inputs/outputs only (for scikit-learn classifiers, convert with zipmap=False)"
        )
    tensor = value.type.tensor_type
    row = BY_ONNX.get(tensor.elem_type)
    if row is None:
        raise UnsupportedModelError(
            f"graph value {value.name!r} has ONNX element type {tensor.elem_type}, "
            "which Shipyard does not serve"
        )
    dims = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1)
    return TensorSpec(name=value.name, dtype=row.name, shape=tuple(dims))


def graph_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (excluding initializers listed as inputs) and outputs of the main graph."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in model.graph.output]
    return inputs, outputs


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return max((int(e.version) for e in model.opset_import), default=1)
