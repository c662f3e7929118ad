"""Tiny ONNX models built in code, packed into a temporary repository, and app helpers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import shipyard
from shipyard.package.dtypes import BY_V2, DTYPES
from shipyard.serving.lifecycle import Server
from shipyard.serving.settings import ServerSettings, load_settings


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def scale_graph(factor: float = 2.0) -> onnx.ModelProto:
    """x: float32[?, 4] -> y = x * factor (float32[?, 4]), s = sum(x, axis 1) (float32[?])."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [None])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
    ]
    return _model(helper.make_graph(nodes, "scale", [x], [y, s], initializer=[k, axes]))


def identity_graph() -> onnx.ModelProto:
    """One input `in_<DT>` of shape [?, 2] per V2 datatype, echoed to `out_<DT>`."""
    inputs, outputs, nodes = [], [], []
    for row in DTYPES:
        inputs.append(helper.make_tensor_value_info(f"in_{row.v2}", row.onnx, [None, 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{row.v2}", row.onnx, [None, 2]))
        nodes.append(helper.make_node("Identity", [f"in_{row.v2}"], [f"out_{row.v2}"]))
    return _model(helper.make_graph(nodes, "identity", inputs, outputs))


def fixed_graph() -> onnx.ModelProto:
    """x: float32[1, 4] -> y = x + 1: no batch dimension, so batching stays off."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Add", ["x", "one"], ["y"])]
    return _model(helper.make_graph(nodes, "fixed", [x], [y], initializer=[one]))


GRAPHS: dict[str, Callable[..., onnx.ModelProto]] = {
    "scale": scale_graph,
    "identity": identity_graph,
    "fixed": fixed_graph,
}


def _sample_for(datatype: str, rows: int = 3) -> np.ndarray:
    """A [rows, 2] array of `datatype` with values worth round-tripping."""
    if datatype == "BYTES":
        words = ["a", "", "héllo", "x" * 40, "zz", "\u2603"]
        return np.array(
            [[words[(2 * r + c) % 6] for c in range(2)] for r in range(rows)], dtype=object
        )
    if datatype == "BOOL":
        return np.arange(rows * 2).reshape(rows, 2) % 3 == 0
    dtype = BY_V2[datatype].numpy
    if dtype.kind == "f":
        return (np.arange(rows * 2).reshape(rows, 2) * 0.5 - 1).astype(dtype)
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
    return np.array([values[i % 6] for i in range(rows * 2)], dtype=dtype).reshape(rows, 2)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


Packer = Callable[..., Path]


@pytest.fixture
def pack(repo: Path) -> Packer:
    """pack(kind, name=kind, version=None, into=repo, **graph_args) -> version folder."""

    def _pack(
        kind: str = "scale",
        *,
        name: str | None = None,
        version: int | None = None,
        into: Path | None = None,
        **graph_args: Any,
    ) -> Path:
        result = shipyard.pack(
            GRAPHS[kind](**graph_args), name=name or kind, repo=into or repo, version=version
        )
        return result.path

    return _pack


def _corrupt_copy(version_dir: Path, target: Path) -> None:
    """Copy a packed version to `target` with one byte of model.onnx flipped."""
    shutil.copytree(version_dir, target)
    model = target / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _settings_for(repo: Path, **overrides: Any) -> ServerSettings:
    overrides.setdefault("poll_interval_s", 0)
    overrides.setdefault("port", 0)
    return load_settings(repository=repo, **overrides)


@asynccontextmanager
async def _app_client(settings: ServerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the in-process ASGI app, with its lifespan running."""
    server = Server(settings)
    app = server.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard") as client:
            client.app = app  # type: ignore[attr-defined]
            client.server = server  # type: ignore[attr-defined]
            yield client


@pytest.fixture
def corrupt_copy() -> Callable[[Path, Path], None]:
    return _corrupt_copy


@pytest.fixture
def settings_for() -> Callable[..., ServerSettings]:
    """settings_for(repo, **overrides): port 0 and no polling unless overridden."""
    return _settings_for


@pytest.fixture
def app_client() -> Callable[[ServerSettings], Any]:
    """async with app_client(settings) as client: httpx over the ASGI app (lifespan on)."""
    return _app_client


@pytest.fixture
def sample_for() -> Callable[..., np.ndarray]:
    """sample_for(datatype, rows=3): a [rows, 2] array worth round-tripping."""
    return _sample_for
