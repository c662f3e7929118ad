"""ONNX importer: checker, shape inference and a trial run before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tests.conftest import affine_reference, make_affine_onnx

import shipyard
from shipyard.errors import ConversionError, UnsupportedModelError


def test_onnx_file_round_trip(tmp_path: Path) -> None:
    model = make_affine_onnx()
    path = tmp_path / "affine.onnx"
    onnx.save(model, str(path))
    result = shipyard.pack(path, name="affine", repo=tmp_path / "models")
    loaded = shipyard.load(result.path)
    x = np.random.default_rng(3).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.infer(x)["y"], affine_reference(model, x), rtol=1e-5)
    assert loaded.manifest.source.framework == "onnx"
    assert loaded.manifest.opset == 17


def test_checker_rejects_invalid_graph(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["nope"], ["y"])], "bad", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match="onnx.checker rejects"):
        shipyard.pack(model, name="bad", repo=tmp_path)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_shape_inference_catches_mismatch(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    w = onnx.numpy_helper.from_array(np.ones((4, 5), np.float32), "w")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y], initializer=[w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match=r"checker rejects|shape inference"):
        shipyard.pack(model, name="mm", repo=tmp_path)


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises((UnsupportedModelError, ConversionError), match="corrupt.onnx"):
        shipyard.pack(path, name="c", repo=tmp_path / "m")


def test_unknown_suffix_and_object(tmp_path: Path) -> None:
    path = tmp_path / "model.xyz"
    path.write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="unknown model file type"):
        shipyard.pack(path, name="x", repo=tmp_path)
    with pytest.raises(UnsupportedModelError, match="cannot import a builtins.dict"):
        shipyard.pack({"a": 1}, name="x", repo=tmp_path)
