"""PyTorch importer: modules, ExportedPrograms and .pt2/.pt files survive pack → load → infer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shipyard
from shipyard.errors import ConversionError, UnsafePickleError, UnsupportedModelError, UsageError
from shipyard.package.graph_specs import graph_signature
from shipyard.package.manifest import MODEL_FILE

torch = pytest.importorskip("torch", reason="the PyTorch importer needs the 'torch' extra")
pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")

import onnx  # noqa: E402
from torch import nn  # noqa: E402

from shipyard.importers import pytorch_export  # noqa: E402

ATOL = 1e-4


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.out = nn.Linear(8, 3)

    def forward(self, x: Any) -> Any:
        return self.out(self.act(self.hidden(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        with torch.no_grad():  # running stats that differ from train-mode batch statistics
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, image: Any) -> Any:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(image)))).flatten(1))


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, features: Any, extra: Any) -> Any:
        mixed = self.a(features) + self.b(extra)
        return mixed, torch.sigmoid(mixed).sum(dim=1, keepdim=True)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        logits = self.a(x)
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 3)

    def forward(self, x: Any) -> Any:
        return self.a(x.view(2, -1))  # pins the batch size to the sample's


class MaskedMean(nn.Module):
    """Token ids and a mask of one shape [batch, sequence]: the sequence dim must be shared."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, ids: Any, mask: Any) -> Any:
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(ids) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.out(pooled)


def _tokens(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[0, length // 2 + 1 :] = 0  # padding at the end of the first row
    return {"ids": rng.integers(0, 20, (batch, length)), "mask": mask}


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_out(module: Any, *arrays: np.ndarray) -> Any:
    with torch.no_grad():
        return module(*(torch.from_numpy(a.copy()) for a in arrays))


def _pack_load(model: Any, tmp_path: Path, sample: Any, **options: Any) -> shipyard.Model:
    shipyard.pack(model, name="m", repo=tmp_path, sample_input=sample, **options)
    return shipyard.load(tmp_path / "m")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_mlp_round_trip_with_dynamic_batch(tmp_path: Path) -> None:
    module = MLP().eval()
    loaded = _pack_load(module, tmp_path, _rand(5, 4))
    assert [(s.name, s.shape) for s in loaded.inputs] == [("x", (-1, 4))]
    assert [(s.name, s.shape) for s in loaded.outputs] == [("output", (-1, 3))]
    for batch in (5, 3, 1):
        x = _rand(batch, 4, seed=batch)
        got = loaded.infer(x)["output"]
        np.testing.assert_allclose(got, _torch_out(module, x).numpy(), atol=ATOL)
    meta = loaded.manifest.metadata
    assert meta["exporter"] == "torch.onnx.export(dynamo=True)"
    assert meta["opset"] == loaded.manifest.opset == 18
    assert loaded.manifest.source.framework == "pytorch"
    loaded.close()


def test_cnn_with_batchnorm_uses_eval_mode_and_restores_training(tmp_path: Path) -> None:
    module = SmallCNN()  # left in training mode on purpose
    loaded = _pack_load(module, tmp_path, _rand(2, 3, 8, 8))
    assert module.training, "pack must put the module back in the mode it found it in"
    x = _rand(7, 3, 8, 8, seed=1)
    expected = _torch_out(module.eval(), x).numpy()
    np.testing.assert_allclose(loaded.infer({"image": x})["output"], expected, atol=ATOL)
    loaded.close()


def test_two_inputs_and_two_outputs_follow_forward_order(tmp_path: Path) -> None:
    module = TwoInTwoOut().eval()
    sample = {"extra": _rand(3, 2), "features": _rand(3, 4)}  # keys out of forward() order
    loaded = _pack_load(module, tmp_path, sample)
    assert [s.name for s in loaded.inputs] == ["features", "extra"]
    assert [s.name for s in loaded.outputs] == ["output_0", "output_1"]
    features, extra = _rand(6, 4, seed=2), _rand(6, 2, seed=3)
    got = loaded.infer({"features": features, "extra": extra})
    want = _torch_out(module, features, extra)
    np.testing.assert_allclose(got["output_0"], want[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(got["output_1"], want[1].numpy(), atol=ATOL)
    loaded.close()


def test_dict_outputs_are_named_by_their_keys_and_batch_one_stays_dynamic(
    tmp_path: Path,
) -> None:
    module = DictOut().eval()
    loaded = _pack_load(module, tmp_path, _rand(1, 4), opset=17)
    assert loaded.manifest.opset == 17
    assert [s.name for s in loaded.outputs] == ["logits", "probs"]
    assert loaded.inputs[0].shape == (-1, 4)
    x = _rand(4, 4, seed=4)
    got, want = loaded.infer(x), _torch_out(module, x)
    for key in ("logits", "probs"):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=ATOL)
    loaded.close()


def test_a_sample_is_required(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="sample_input"):
        shipyard.pack(MLP(), name="m", repo=tmp_path)


def test_a_hard_coded_batch_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="batch"):
        shipyard.pack(FixedBatch(), name="m", repo=tmp_path, sample_input=_rand(2, 3, 4))
    assert not (tmp_path / "m").exists()


def test_legacy_exporter_is_the_recorded_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytorch_export, "_export_dynamo", _broken_dynamo)
    module = MLP().eval()
    loaded = _pack_load(module, tmp_path, _rand(2, 4))
    meta = loaded.manifest.metadata
    assert meta["exporter"] == "torch.onnx.export(dynamo=False)"
    assert "dynamo says no" in meta["exporter_reason"]
    assert loaded.manifest.source.converter == "torch.onnx (torchscript, legacy)"
    x = _rand(9, 4, seed=5)
    np.testing.assert_allclose(loaded.infer(x)["output"], _torch_out(module, x).numpy(), atol=ATOL)
    loaded.close()


def _broken_dynamo(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("dynamo says no")


SEQUENCE_AXES = {"ids": {1: "sequence"}, "mask": {1: "sequence"}}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_shared_dynamic_sequence_dim_across_two_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str
) -> None:
    if exporter == "legacy":
        monkeypatch.setattr(pytorch_export, "_export_dynamo", _broken_dynamo)
    module = MaskedMean().eval()
    result = shipyard.pack(
        module,
        name="m",
        repo=tmp_path,
        sample_input=_tokens(2, 4),
        dynamic_axes=SEQUENCE_AXES,
    )
    proto = onnx.load(str(result.path / MODEL_FILE))
    inputs, outputs = graph_signature(proto)
    assert [(s.name, s.shape) for s in inputs] == [("ids", (-1, -1)), ("mask", (-1, -1))]
    assert [(s.name, s.shape) for s in outputs] == [("output", (-1, 3))]
    symbols = [[d.dim_param for d in v.type.tensor_type.shape.dim] for v in proto.graph.input]
    assert symbols == [["batch", "sequence"], ["batch", "sequence"]]
    loaded = shipyard.load(tmp_path / "m")
    assert loaded.manifest.metadata["dynamic_axes"] == {
        "ids": {"0": "batch", "1": "sequence"},
        "mask": {"0": "batch", "1": "sequence"},
    }
    assert (
        loaded.manifest.metadata["exporter"] == f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
    )
    for batch, length in ((3, 7), (1, 2), (5, 11)):
        feed = _tokens(batch, length, seed=batch)
        got = loaded.infer(feed)["output"]
        want = _torch_out(module, feed["ids"], feed["mask"]).numpy()
        np.testing.assert_allclose(got, want, atol=ATOL)
    loaded.close()


def test_dynamic_axes_mistakes_are_usage_errors(tmp_path: Path) -> None:
    module, sample = MaskedMean().eval(), _tokens(2, 4)
    with pytest.raises(UsageError, match="not model inputs"):
        shipyard.pack(
            module,
            name="m",
            repo=tmp_path,
            sample_input=sample,
            dynamic_axes={"tokens": {1: "sequence"}},
        )
    with pytest.raises(UsageError, match="dim 2"):
        shipyard.pack(
            module,
            name="m",
            repo=tmp_path,
            sample_input=sample,
            dynamic_axes={"ids": {2: "sequence"}},
        )
    mixed_up = {"ids": {1: "sequence"}, "mask": {0: "sequence"}}  # 4 tokens vs batch 2
    with pytest.raises(UsageError, match="one size"):
        shipyard.pack(module, name="m", repo=tmp_path, sample_input=sample, dynamic_axes=mixed_up)
    path = tmp_path / "model.pt2"
    torch.export.save(_exported_program(TwoInTwoOut().eval()), path)
    with pytest.raises(UsageError, match="live torch.nn.Module"):
        shipyard.pack(path, name="m", repo=tmp_path, dynamic_axes={"features": {1: "f"}})
    assert not (tmp_path / "m").exists()


def _exported_program(module: Any) -> Any:
    batch = torch.export.Dim("batch")
    args = (torch.randn(3, 4), torch.randn(3, 2))
    shapes = {"features": {0: batch}, "extra": {0: batch}}
    return torch.export.export(module, args, dynamic_shapes=shapes)


def test_exported_program_object_uses_its_example_inputs(tmp_path: Path) -> None:
    module = TwoInTwoOut().eval()
    loaded = _pack_load(_exported_program(module), tmp_path, None)
    assert [s.name for s in loaded.inputs] == ["features", "extra"]
    assert all(s.shape[0] == -1 for s in loaded.inputs)
    features, extra = _rand(5, 4, seed=6), _rand(5, 2, seed=7)
    got = loaded.infer({"features": features, "extra": extra})
    np.testing.assert_allclose(got["output_0"], _torch_out(module, features, extra)[0], atol=ATOL)
    loaded.close()


def test_static_exported_program_is_refused_with_advice(tmp_path: Path) -> None:
    program = torch.export.export(MLP().eval(), (torch.randn(2, 4),))
    with pytest.raises(UsageError, match="dynamic_shapes"):
        shipyard.pack(program, name="m", repo=tmp_path, sample_input=_rand(2, 4))


def test_pt2_file_round_trip(tmp_path: Path) -> None:
    module = TwoInTwoOut().eval()
    path = tmp_path / "model.pt2"
    torch.export.save(_exported_program(module), path)
    sample = {"features": _rand(2, 4), "extra": _rand(2, 2)}
    shipyard.pack(path, name="m", repo=tmp_path / "repo", sample_input=sample)
    loaded = shipyard.load(tmp_path / "repo" / "m")
    features, extra = _rand(8, 4, seed=8), _rand(8, 2, seed=9)
    got = loaded.infer({"features": features, "extra": extra})
    want = _torch_out(module, features, extra)
    np.testing.assert_allclose(got["output_0"], want[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(got["output_1"], want[1].numpy(), atol=ATOL)
    loaded.close()


def test_whole_pickled_module_needs_trust_and_reviewed_globals(tmp_path: Path) -> None:
    module = MLP().eval()
    path = tmp_path / "model.pt"
    torch.save(module, path)
    repo = tmp_path / "repo"
    own_class = f"{MLP.__module__}.{MLP.__qualname__}"

    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        shipyard.pack(path, name="m", repo=repo, sample_input=_rand(2, 4))
    with pytest.raises(UnsafePickleError, match="MLP") as refused:
        shipyard.pack(path, name="m", repo=repo, sample_input=_rand(2, 4), trust_pickle=True)
    assert "--allow-global" in str(refused.value)
    assert not repo.exists()

    reviewed = [own_class, "torch.nn.modules.linear.Linear", "torch.nn.modules.activation.ReLU"]
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        shipyard.pack(path, name="m", repo=repo, sample_input=_rand(2, 4), allow_globals=reviewed)
    loaded = _pack_load(path, repo, _rand(2, 4), trust_pickle=True, allow_globals=reviewed)
    x = _rand(6, 4, seed=10)
    np.testing.assert_allclose(loaded.infer(x)["output"], _torch_out(module, x).numpy(), atol=ATOL)
    loaded.close()


def test_state_dict_file_explains_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(MLP().state_dict(), path)
    with pytest.raises(UnsupportedModelError, match="state_dict"):
        shipyard.pack(path, name="m", repo=tmp_path / "repo", sample_input=_rand(2, 4))


def test_export_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    shipyard.pack(SmallCNN(), name="m", repo=tmp_path, sample_input=_rand(2, 3, 8, 8))
    assert capfd.readouterr().out == ""
