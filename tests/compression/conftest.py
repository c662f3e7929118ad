"""Tiny models for compression tests: an MLP (Gemm) and a CNN, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import shipyard
from shipyard.compression import MeasureConfig

FAST = MeasureConfig(
    batch_size=8, latency_runs=5, throughput_runs=2, warmup_runs=1, max_rows=64, min_seconds=0
)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    name: str,
    inits: dict[str, np.ndarray],
    outputs: int,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_mlp(features: int = 64, hidden: int = 128, classes: int = 10) -> onnx.ModelProto:
    """Gemm(transB) → Relu → Gemm, as torch exports nn.Linear; deterministic weights."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": (rng.standard_normal((hidden, features)) / np.sqrt(features)).astype(np.float32),
        "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((classes, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "b2": (rng.standard_normal(classes) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1, name="fc2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])
    return _model(nodes, [x], "mlp", inits, classes)


def make_cnn(classes: int = 10) -> onnx.ModelProto:
    """Conv → Relu → MaxPool → Conv → Relu → Flatten → Gemm on [N, 1, 8, 8] images."""
    rng = np.random.default_rng(1)
    inits = {
        "c1": (rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32),
        "c1b": np.zeros(8, np.float32),
        "c2": (rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72)).astype(np.float32),
        "c2b": np.zeros(16, np.float32),
        "fc": (rng.standard_normal((classes, 16 * 4 * 4)) / 16).astype(np.float32),
        "fcb": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("MaxPool", ["ar"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2", "c2b"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Flatten", ["br"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1, name="fc"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    return _model(nodes, [x], "cnn", inits, classes)


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def mlp_x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)


@pytest.fixture(scope="session")
def cnn_x() -> np.ndarray:
    return np.random.default_rng(8).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)


@pytest.fixture
def mlp_repo(tmp_path: Path, mlp_x: np.ndarray) -> Path:
    """A repository with mlp version 1 and eval.npz (inputs + the fp32 model's own labels)."""
    model = make_mlp()
    repo = tmp_path / "models"
    shipyard.pack(model, name="mlp", repo=repo, sample_input=mlp_x[:4])
    labels = run(model, mlp_x).argmax(axis=1)
    np.savez(tmp_path / "eval.npz", x=mlp_x, y=labels)
    return repo


@pytest.fixture
def cnn_repo(tmp_path: Path, cnn_x: np.ndarray) -> Path:
    model = make_cnn()
    repo = tmp_path / "models"
    shipyard.pack(model, name="cnn", repo=repo, sample_input=cnn_x[:4])
    np.savez(tmp_path / "calib.npz", x=cnn_x[:32])
    np.savez(tmp_path / "eval.npz", x=cnn_x, y=run(model, cnn_x).argmax(axis=1))
    return repo
