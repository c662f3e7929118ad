"""ONNX Runtime backend: provider choice, options, input checks and outputs as numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tests.conftest import affine_reference, make_affine_onnx

from shipyard.errors import InputError, RuntimeBackendError
from shipyard.package.graph_specs import graph_signature
from shipyard.runtime import OnnxRuntime, Runtime, RuntimeOptions, choose_providers


def _runtime(model: onnx.ModelProto, **options: object) -> OnnxRuntime:
    inputs, outputs = graph_signature(model)
    return OnnxRuntime(
        model.SerializeToString(),
        inputs=inputs,
        outputs=outputs,
        options=RuntimeOptions(**options),  # type: ignore[arg-type]
    )


def test_cpu_always_chosen_and_cuda_only_when_available() -> None:
    chosen = choose_providers()
    assert chosen[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert chosen == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeBackendError, match="not available in this onnxruntime build"):
        choose_providers(["NoSuchExecutionProvider"])


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_optimization_levels_and_threads_give_same_numbers(level: str) -> None:
    model = make_affine_onnx()
    runtime = _runtime(model, graph_optimization=level, intra_op_threads=1, inter_op_threads=1)
    assert isinstance(runtime, Runtime)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    out = runtime.infer({"x": x})
    assert isinstance(out["y"], np.ndarray) and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], affine_reference(model, x), rtol=1e-5)
    assert runtime.providers == ["CPUExecutionProvider"]


def test_requested_outputs_and_unknown_output() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
        "two",
        [x],
        [a, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runtime = _runtime(model)
    data = np.array([[1.0, -2.0]], np.float32)
    assert set(runtime.infer({"x": data})) == {"a", "b"}
    only_b = runtime.infer({"x": data}, ["b"])
    assert list(only_b) == ["b"]
    np.testing.assert_array_equal(only_b["b"], -data)
    with pytest.raises(InputError, match=r"unknown output\(s\) \['c'\]"):
        runtime.infer({"x": data}, ["c"])


def test_integer_inputs_cast_only_when_lossless() -> None:
    x = helper.make_tensor_value_info("ids", TensorProto.INT32, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["y"])], "id", [x], [y])
    runtime = _runtime(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert runtime.infer({"ids": np.array([1, 2], np.int64)})["y"].dtype == np.int32
    assert runtime.infer({"ids": np.array([1, 2], np.int8)})["y"].tolist() == [1, 2]
    with pytest.raises(InputError, match="converting would change values"):
        runtime.infer({"ids": np.array([2**40], np.int64)})
    with pytest.raises(InputError, match="dtype float32"):
        runtime.infer({"ids": np.array([1.5], np.float32)})


def test_unloadable_bytes_give_backend_error() -> None:
    with pytest.raises(RuntimeBackendError, match="ONNX Runtime cannot load it"):
        OnnxRuntime(b"not a model", inputs=[], outputs=[])


def test_closed_runtime_refuses() -> None:
    runtime = _runtime(make_affine_onnx())
    runtime.close()
    with pytest.raises(RuntimeBackendError, match="closed"):
        runtime.infer({"x": np.zeros((1, 4), np.float32)})


def test_out_of_range_integer_cast_check_raises_no_warning() -> None:
    import warnings

    runtime = _runtime(make_affine_onnx())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="converting would change values"):
            runtime.infer({"x": np.full((1, 4), 2**64 - 1, np.uint64)})
