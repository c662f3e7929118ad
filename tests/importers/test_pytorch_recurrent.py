"""Recurrent PyTorch (and Keras) models with a dynamic time axis: pack, load, run at any length."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shipyard
from shipyard.errors import ConversionError
from shipyard.package.manifest import MODEL_FILE

torch = pytest.importorskip("torch", reason="the PyTorch importer needs the 'torch' extra")
pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")

import onnx  # noqa: E402
from torch import nn  # noqa: E402

from shipyard.importers import pytorch_export  # noqa: E402

ATOL = 1e-4
TIME = {"x": {1: "time"}}


class LastStep(nn.Module):
    """The common `y[:, -1]` head on a GRU."""

    def __init__(self, *, bidirectional: bool = False) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(16 if bidirectional else 8, 2)

    def forward(self, x: Any) -> Any:
        y, _ = self.gru(x)
        return self.head(y[:, -1])


class EveryStep(nn.Module):
    """An LSTM with a head on every time step: the output's time dim follows the input's."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Any) -> Any:
        y, _ = self.lstm(x)
        return self.head(y)


class UnrolledCell(nn.Module):
    """A Python loop over the time steps: every exporter unrolls it to the sample's length."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Any) -> Any:
        h = torch.zeros(x.shape[0], 8)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class Positions(nn.Module):
    """Learned positions for at most 7 steps: the original itself refuses longer inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.position = nn.Embedding(7, 4)

    def forward(self, x: Any) -> Any:
        y, _ = self.lstm(x)
        return y + self.position(torch.arange(x.shape[1]))


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_out(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(x.copy())).numpy())


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("exporter says no")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_last_step_head_packs_with_a_dynamic_time_axis_every_time(
    tmp_path: Path, bidirectional: bool
) -> None:
    # torch 2.13's torch.export specialises the time dim of a GRU from the second export in a
    # process on (a notebook re-run): then the TorchScript exporter must take over.
    module = LastStep(bidirectional=bidirectional).eval()
    for name in ("first", "second"):
        result = shipyard.pack(
            module, name=name, repo=tmp_path, sample_input=_rand(4, 7, 3), dynamic_axes=TIME
        )
        meta = result.manifest.metadata
        if meta["exporter"] == "torch.onnx.export(dynamo=False)":
            assert meta["exporter_reason"].startswith("fallback: dynamo exporter failed")
        assert meta["length_check"] == (
            "outputs at time=10 match the original model (sample: time=7)"
        )
        assert [s.shape for s in result.manifest.inputs] == [(-1, -1, 3)]
        assert [s.shape for s in result.manifest.outputs] == [(-1, 2)]
        loaded = shipyard.load(tmp_path / name)
        for batch, length in ((2, 13), (1, 1), (5, 7)):
            x = _rand(batch, length, 3, seed=length)
            got = loaded.infer(x)["output"]
            np.testing.assert_allclose(got, _torch_out(module, x), atol=ATOL)
        loaded.close()


def _specialising_dynamo(*args: Any, **kwargs: Any) -> Any:
    """The dynamo exporter as torch.export leaves it when it specialises the time dim."""
    proto, notes = _real_dynamo(*args, **kwargs)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    return proto, notes


_real_dynamo = pytorch_export._export_dynamo


def test_a_specialised_time_dim_falls_back_to_the_torchscript_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytorch_export, "_export_dynamo", _specialising_dynamo)
    module = LastStep().eval()
    result = shipyard.pack(
        module, name="gru", repo=tmp_path, sample_input=_rand(4, 7, 3), dynamic_axes=TIME
    )
    meta = result.manifest.metadata
    assert meta["exporter"] == "torch.onnx.export(dynamo=False)"
    assert meta["exporter_reason"] == (
        "fallback: dynamo exporter failed (ConversionError: the exporter fixed the dynamic "
        "dims ['x[1]']; the exporter specialised it through GRU layers)"
    )
    assert result.manifest.source.converter == "torch.onnx (torchscript, legacy)"
    loaded = shipyard.load(tmp_path / "gru")
    x = _rand(3, 11, 3, seed=11)
    np.testing.assert_allclose(loaded.infer(x)["output"], _torch_out(module, x), atol=ATOL)
    loaded.close()


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_lstm_output_time_dim_is_recorded_dynamic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str
) -> None:
    if exporter == "legacy":
        monkeypatch.setattr(pytorch_export, "_export_dynamo", _broken)
    module = EveryStep().eval()
    result = shipyard.pack(
        module, name="lstm", repo=tmp_path, sample_input=_rand(4, 7, 3), dynamic_axes=TIME
    )
    assert [s.shape for s in result.manifest.outputs] == [(-1, -1, 2)]
    assert result.manifest.metadata["exporter"] == (
        f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
    )
    proto = onnx.load(str(result.path / MODEL_FILE))
    time_dim = proto.graph.output[0].type.tensor_type.shape.dim[1]
    assert time_dim.dim_param == "time"  # graph and manifest agree
    loaded = shipyard.load(tmp_path / "lstm")
    assert [s.shape for s in loaded.outputs] == [(-1, -1, 2)]
    x = _rand(3, 12, 3, seed=3)  # a third length: neither the sample's nor the check's
    got = loaded.infer(x)["output"]
    assert got.shape == (3, 12, 2)
    np.testing.assert_allclose(got, _torch_out(module, x), atol=ATOL)
    loaded.close()


def test_a_graph_that_fixed_the_time_length_is_refused(tmp_path: Path) -> None:
    # Both exporters unroll the loop; the TorchScript graph even runs at other lengths, but
    # reads only the first 7 steps: only the check at a second length can see that.
    with pytest.raises(ConversionError, match=r"at time=10 differs .*pins that size"):
        shipyard.pack(
            UnrolledCell().eval(),
            name="m",
            repo=tmp_path,
            sample_input=_rand(4, 7, 3),
            dynamic_axes=TIME,
        )
    assert not (tmp_path / "m").exists()


def test_no_exporter_keeping_the_time_axis_is_called_an_exporter_limitation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytorch_export, "_export_dynamo", _specialising_dynamo)
    monkeypatch.setattr(pytorch_export, "_export_legacy", _broken)
    with pytest.raises(ConversionError) as refused:
        shipyard.pack(
            LastStep().eval(),
            name="m",
            repo=tmp_path,
            sample_input=_rand(4, 7, 3),
            dynamic_axes=TIME,
        )
    message = str(refused.value)
    assert "torch.export" in message and "through GRU" in message
    assert "exporter limitation, not your code" in message
    assert "without dynamic_axes" in message and "pack the .onnx" in message
    assert "pins" not in message
    assert "\n" not in message


def test_a_model_that_refuses_longer_inputs_is_checked_at_a_shorter_length(
    tmp_path: Path,
) -> None:
    module = Positions().eval()
    result = shipyard.pack(
        module, name="m", repo=tmp_path, sample_input=_rand(2, 7, 3), dynamic_axes=TIME
    )
    assert result.manifest.metadata["length_check"].startswith("outputs at time=6 match")
    assert [s.shape for s in result.manifest.outputs] == [(-1, -1, 4)]
    loaded = shipyard.load(tmp_path / "m")
    x = _rand(2, 4, 3, seed=4)
    np.testing.assert_allclose(loaded.infer(x)["output"], _torch_out(module, x), atol=ATOL)
    loaded.close()


@pytest.fixture
def keras() -> Any:
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed (the 'keras' extra)")
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":  # the user's choice
        pytest.skip("KERAS_BACKEND names another backend in this environment")
    from shipyard.importers.keras import import_keras

    return import_keras()


def _keras_lstm(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(None, 3), name="x")
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.LSTM(8)(x)))


def test_keras_lstm_with_a_dynamic_time_axis_is_refused_as_an_exporter_limitation(
    tmp_path: Path, keras: Any
) -> None:
    # Keras' torch backend runs LSTM as a Python loop, which every torch exporter unrolls.
    with pytest.raises(ConversionError) as refused:
        shipyard.pack(
            _keras_lstm(keras),
            name="m",
            repo=tmp_path,
            sample_input=_rand(4, 7, 3),
            dynamic_axes=TIME,
        )
    message = str(refused.value)
    assert message.startswith("Keras' torch backend runs LSTM layers as a Python loop")
    assert "exporter limitation" in message and "without dynamic_axes" in message
    assert "pins" not in message
    assert not (tmp_path / "m").exists()


def test_keras_lstm_packs_at_the_sample_length(tmp_path: Path, keras: Any) -> None:
    model = _keras_lstm(keras)
    result = shipyard.pack(model, name="m", repo=tmp_path, sample_input=_rand(4, 7, 3))
    assert [s.shape for s in result.manifest.inputs] == [(-1, 7, 3)]
    assert "length_check" not in result.manifest.metadata
    loaded = shipyard.load(tmp_path / "m")
    x = _rand(5, 7, 3, seed=5)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(loaded.infer(x)["output"], want, atol=ATOL)
    loaded.close()
