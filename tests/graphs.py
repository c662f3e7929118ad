"""Small ONNX graphs with the traits real models have (built in code, run by ONNX Runtime).

- `bert_like`: input_ids / attention_mask / token_type_ids into word (vocab 30) and token
  type (2 rows) embedding lookups, as in a Hugging Face BERT export.
- `vad_like`: audio [batch, samples], a recurrent state [2, batch, 1] (batch on axis 1) and
  a scalar int64 sample rate that must equal 16000 (silero-vad's signature).
- `ragged_triples`: reshapes x [batch, n] to [-1, 3], so it runs only when n is a multiple
  of 3: every made-up size fails, real inputs run.
- `row_mixing`: y = x + sum(x over dim 0): dim 0 is dynamic but not a batch axis.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, TYPES, HIDDEN = 30, 2, 4


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def bert_like() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    words = numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "W")
    types = numpy_helper.from_array(rng.standard_normal((TYPES, HIDDEN)).astype(np.float32), "T")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["W", "input_ids"], ["words"]),
        helper.make_node("Gather", ["T", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["summed"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
        helper.make_node("Mul", ["summed", "mask3"], ["last_hidden_state"]),
    ]
    ids = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    out = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]
    )
    return _model(helper.make_graph(nodes, "bert_like", ids, [out], [words, types, axes]))


def bert_reference(feed: dict[str, np.ndarray]) -> np.ndarray:
    model = bert_like()
    tables = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    summed = tables["W"][feed["input_ids"]] + tables["T"][feed["token_type_ids"]]
    return summed * feed["attention_mask"][..., None].astype(np.float32)


def vad_like() -> onnx.ModelProto:
    sixteen_k = numpy_helper.from_array(np.array(16000, np.int64), "sixteen_k")
    zero_axis = numpy_helper.from_array(np.array([0], np.int64), "zero_axis")
    nodes = [
        helper.make_node("Equal", ["sr", "sixteen_k"], ["ok"]),
        helper.make_node("Cast", ["ok"], ["okf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["input"], ["level"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["level", "okf"], ["output"]),
        # new state: old state + the batch's level, broadcast over [2, batch, 4]
        helper.make_node("Unsqueeze", ["level", "zero_axis"], ["level_t"]),
        helper.make_node("Add", ["state", "level_t"], ["stateN"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 1]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 1]),
    ]
    return _model(helper.make_graph(nodes, "vad_like", inputs, outputs, [sixteen_k, zero_axis]))


def vad_reference(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    level = feed["input"].mean(axis=1, keepdims=True) * float(feed["sr"] == 16000)
    raw_level = feed["input"].mean(axis=1, keepdims=True)  # [batch, 1]
    return {"output": level, "stateN": feed["state"] + raw_level[None]}


def ragged_triples() -> onnx.ModelProto:
    """x [batch, n] reshaped to [-1, 3]: runs only when n is a multiple of 3."""
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Reshape", ["x", "shape"], ["rows"]),
        helper.make_node("Neg", ["rows"], ["neg"]),
        helper.make_node("Reshape", ["neg", "xs"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])
    return _model(helper.make_graph(nodes, "ragged_triples", [x], [y], [shape]))


def row_mixing() -> onnx.ModelProto:
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    return _model(helper.make_graph(nodes, "row_mixing", [x], [y], [axes]))
