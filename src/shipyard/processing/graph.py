"""Sentence pooling and L2 normalisation appended to an ONNX graph as plain ONNX ops.

The served graph then outputs one embedding per text ([N, D]) itself, so batching, the
runtime, compression and every protocol stay generic: nothing pools in Python at serve
time. Mean pooling follows sentence-transformers: sum of token vectors where the mask is
1, over the count of such tokens (at least 1e-9); normalisation divides by the L2 norm
(at least 1e-12), as torch.nn.functional.normalize does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shipyard.errors import UsageError
from shipyard.processing.spec import Pooling

_PREFIX = "shipyard_pool_"


def append_pooling(
    model: onnx.ModelProto,
    *,
    pooling: Pooling | None,
    normalize: bool,
    attention_mask: str | None,
    output: str,
    token_output: str | None = None,
) -> onnx.ModelProto:
    """A copy of `model` whose only output is `output` [N, D], pooled from the token states.

    `token_output` (default: the graph's first output) must be [N, T, D] (pooling) or
    already [N, D] (normalisation only).
    """
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    source_name = token_output or graph.output[0].name
    if source_name not in outputs:
        raise UsageError(
            f"the graph has no output {source_name!r}; it has {sorted(outputs)} "
            "(pass --token-output NAME)"
        )
    if output in outputs and output != source_name:
        raise UsageError(f"the graph already has an output {output!r}; pooling would shadow it")
    source = outputs[source_name]
    rank = len(source.type.tensor_type.shape.dim)
    elem = source.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        raise UsageError(f"output {source_name!r} is not floating point; it cannot be pooled")
    if pooling is not None and rank != 3:
        raise UsageError(
            f"output {source_name!r} has rank {rank}; pooling needs token states [N, T, D]"
        )
    if pooling is None and rank != 2:
        raise UsageError(
            f"output {source_name!r} has rank {rank}; without pooling it must be [N, D]"
        )
    if pooling == "mean" and attention_mask is None:
        raise UsageError("mean pooling needs the attention mask input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    dtype = helper.tensor_dtype_to_np_dtype(elem)

    def name(part: str) -> str:
        return _PREFIX + part

    def const(part: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name(part)))
        return name(part)

    def reduce_sum(x: str, axis: int, out: str, keepdims: int) -> None:
        if opset >= 13:
            axes = const(f"axes_{out}", np.array([axis], dtype=np.int64))
            nodes.append(helper.make_node("ReduceSum", [x, axes], [out], keepdims=keepdims))
        else:
            nodes.append(helper.make_node("ReduceSum", [x], [out], axes=[axis], keepdims=keepdims))

    current = source_name
    if pooling == "cls":
        index = const("cls_index", np.array(0, dtype=np.int64))
        nodes.append(helper.make_node("Gather", [current, index], [name("cls")], axis=1))
        current = name("cls")
    elif pooling == "mean":
        assert attention_mask is not None
        nodes.append(helper.make_node("Cast", [attention_mask], [name("mask")], to=elem))
        if opset >= 13:
            axes = const("unsqueeze_axes", np.array([2], dtype=np.int64))
            nodes.append(helper.make_node("Unsqueeze", [name("mask"), axes], [name("mask3")]))
        else:
            nodes.append(helper.make_node("Unsqueeze", [name("mask")], [name("mask3")], axes=[2]))
        nodes.append(helper.make_node("Mul", [current, name("mask3")], [name("masked")]))
        reduce_sum(name("masked"), 1, name("summed"), 0)
        reduce_sum(name("mask3"), 1, name("counts"), 0)
        floor = const("count_floor", np.array(1e-9, dtype=dtype))
        nodes.append(helper.make_node("Max", [name("counts"), floor], [name("counts_min")]))
        nodes.append(helper.make_node("Div", [name("summed"), name("counts_min")], [name("mean")]))
        current = name("mean")
    if normalize:
        nodes.append(helper.make_node("Mul", [current, current], [name("squares")]))
        reduce_sum(name("squares"), 1, name("sum_squares"), 1)
        nodes.append(helper.make_node("Sqrt", [name("sum_squares")], [name("norm")]))
        floor = const("norm_floor", np.array(1e-12, dtype=dtype))
        nodes.append(helper.make_node("Max", [name("norm"), floor], [name("norm_min")]))
        nodes.append(helper.make_node("Div", [current, name("norm_min")], [name("normalized")]))
        current = name("normalized")
    nodes.append(helper.make_node("Identity", [current], [output]))
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(inits)
    batch = source.type.tensor_type.shape.dim[0]
    width = source.type.tensor_type.shape.dim[rank - 1]
    dims: list[str | int | None] = [
        batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else None) or "batch",
        width.dim_value if width.HasField("dim_value") else (width.dim_param or "embedding"),
    ]
    del result.graph.output[:]
    result.graph.output.append(helper.make_tensor_value_info(output, elem, dims))
    onnx.checker.check_model(result)
    return result
