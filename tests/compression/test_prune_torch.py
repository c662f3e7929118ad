"""PyTorch pruning: gradual magnitude pruning with masks, strip, and channel removal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shipyard.compression import prune  # noqa: E402


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def _train(
    model: nn.Module, steps: int, pruned: prune.MagnitudePruning | None = None
) -> list[float]:
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if pruned is not None:
        pruned.attach(optimizer)
    seen = []
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if pruned is not None:
            seen.append(pruned.sparsity())
    return seen


def test_gradual_magnitude_pruning_follows_the_schedule() -> None:
    torch.manual_seed(0)
    schedule = prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    pruned = prune.magnitude(TinyCNN(), schedule=schedule)
    seen = _train(pruned, 12, pruned)
    # attach() steps after each optimizer.step: step i prunes when i is a multiple of 2.
    for step, measured in enumerate(seen):
        last_turn = min(step - step % 2, 8)
        assert measured == pytest.approx(schedule.sparsity(last_turn), abs=0.01)
    assert seen[-1] == pytest.approx(0.8, abs=0.01)


def test_pruned_weights_do_not_grow_back() -> None:
    pruned = prune.magnitude(TinyCNN(), schedule=prune.ConstantSparsity(0.5, frequency=1))
    _train(pruned, 1, pruned)
    zeros = pruned.model.head.weight == 0
    _train(pruned, 5, pruned)
    assert bool((pruned.model.head.weight[zeros] == 0).all())


def test_strip_leaves_a_plain_module_with_the_sparsity(tmp_path: Path) -> None:
    pruned = prune.magnitude(TinyCNN(), schedule=prune.ConstantSparsity(0.6, frequency=1))
    _train(pruned, 3, pruned)
    plain = prune.strip(pruned)
    assert type(plain) is TinyCNN
    assert set(plain.state_dict()) == set(TinyCNN().state_dict())
    assert not any(m._forward_pre_hooks for m in plain.modules())
    assert prune.sparsity(plain) == pytest.approx(0.6, abs=0.01)
    out = plain(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


def test_strip_output_packs_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (torch extra)")
    import shipyard

    pruned = prune.magnitude(TinyCNN(), schedule=prune.ConstantSparsity(0.7, frequency=1))
    _train(pruned, 2, pruned)
    plain = prune.strip(pruned).eval()
    sample = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    result = shipyard.pack(plain, name="pruned", repo=tmp_path, sample_input=sample)
    loaded = shipyard.load(result.path)
    with torch.no_grad():
        expected = plain(torch.from_numpy(sample)).numpy()
    got = next(iter(loaded.infer(sample).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_layers_and_schedule_are_checked() -> None:
    with pytest.raises(prune.CompressionConfigError, match="no LSTM"):
        prune.magnitude(TinyCNN(), schedule=prune.ConstantSparsity(0.5), layers=(nn.LSTM,))
    with pytest.raises(prune.CompressionConfigError, match="schedule"):
        prune.magnitude(TinyCNN(), schedule=0.5)  # type: ignore[arg-type]


def test_channel_pruning_really_shrinks_and_runs() -> None:
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = TinyCNN()
    before = prune.count_parameters(model)
    pruned = prune.channels(model, torch.randn(1, 1, 8, 8), ratio=0.5)
    after = prune.count_parameters(pruned)
    assert after < before * 0.6
    conv = pruned.features[0]
    assert conv.out_channels == 8 and pruned.features[1].num_features == 8
    assert pruned.head.out_features == 10  # the classifier keeps its outputs
    assert pruned(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_channel_ratio_is_checked() -> None:
    with pytest.raises(prune.CompressionConfigError, match="ratio"):
        prune.channels(TinyCNN(), torch.randn(1, 1, 8, 8), ratio=1.0)


def _labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the brightest quadrant: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (rows, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, rows)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 0.8
    return x, y.astype(np.int64)


def _pruned_copy(x: np.ndarray, y: np.ndarray) -> prune.ChannelPruneResult:
    torch.manual_seed(0)
    return prune.channels_and_finetune(
        TinyCNN(), x[:1], x, y, ratio=0.5, epochs=2, batch_size=16, learning_rate=3e-3
    )


def test_channels_and_finetune_is_deterministic_and_records_what_it_did() -> None:
    pytest.importorskip("torch_pruning")
    x, y = _labelled(64, 0)
    first, second = _pruned_copy(x, y), _pruned_copy(x, y)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert first.losses == second.losses and len(first.losses) == 2
    assert first.losses[1] < first.losses[0]
    assert not first.model.training
    assert first.parameters_after < first.parameters_before * 0.6
    assert prune.widths(first.model) == [8, 16, 10]
    config = first.config
    assert config["method"] == "prune-channels" and config["ratio"] == 0.5
    assert config["importance"] == "l1" and config["round_to"] is None
    assert config["widths"] == [8, 16, 10]
    assert config["fine_tune"]["epochs"] == 2 and config["fine_tune"]["rows"] == 64
    assert config["parameters"] == {
        "before": first.parameters_before,
        "after": first.parameters_after,
    }
    assert torch.are_deterministic_algorithms_enabled() is False  # the caller's setting back


def test_round_to_keeps_widths_in_blocks() -> None:
    pytest.importorskip("torch_pruning")
    x, y = _labelled(16, 1)
    result = prune.channels_and_finetune(TinyCNN(), x[:1], x, y, ratio=0.5, round_to=16, epochs=0)
    assert prune.widths(result.model) == [16, 16, 10] and result.losses == []


def test_finetune_checks_its_data() -> None:
    with pytest.raises(prune.CompressionConfigError, match="as many labels"):
        prune.finetune(TinyCNN(), np.zeros((4, 1, 8, 8)), np.zeros(3), epochs=1)
    with pytest.raises(prune.CompressionConfigError, match="epochs"):
        prune.finetune(TinyCNN(), np.zeros((4, 1, 8, 8)), np.zeros(4), batch_size=0)


def test_pack_derived_writes_a_measured_child_version(tmp_path: Path) -> None:
    pytest.importorskip("torch_pruning")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (torch extra)")
    import shipyard
    from shipyard.compression import MeasureConfig, pack_derived
    from shipyard.package.store import list_versions, read_verified

    fast = MeasureConfig(latency_runs=5, throughput_runs=2, warmup_runs=0, min_seconds=0)
    x, y = _labelled(96, 2)
    torch.manual_seed(0)
    base = TinyCNN()
    prune.finetune(base, x, y, epochs=3, learning_rate=3e-3)
    repo = tmp_path / "models"
    shipyard.pack(base, name="cnn", repo=repo, sample_input=x[:4], metadata={"classes": 4})
    np.savez(tmp_path / "eval.npz", x=x, y=y)

    result = prune.channels_and_finetune(base, x[:1], x, y, ratio=0.5, epochs=2, learning_rate=3e-3)
    derived = pack_derived(
        result.model,
        parent=repo / "cnn",
        op="prune-channels",
        config=result.config,
        sample_input=x[:4],
        eval_data=tmp_path / "eval.npz",
        max_drop=0.5,
        measure=fast,
        metadata={"note": "pruned"},
    )
    assert derived.accepted and derived.path == repo / "cnn" / "2"
    manifest = read_verified(derived.path)
    assert manifest.lineage.parent == 1
    assert [s.op for s in manifest.lineage.steps] == ["pack", "prune-channels"]
    assert manifest.lineage.steps[-1].config["widths"] == [8, 16, 10]
    assert manifest.metadata["classes"] == 4 and manifest.metadata["note"] == "pruned"
    assert manifest.source.framework == "pytorch"
    assert manifest.conversion_check is not None and manifest.conversion_check.passed
    assert manifest.measured["compared_to_version"] == 1
    assert manifest.measured["size_ratio"] > 1.5
    assert manifest.measured["candidate"]["accuracy"] is not None
    loaded = shipyard.load(repo / "cnn", version=2)
    with torch.no_grad():
        expected = result.model(torch.from_numpy(x[:3])).numpy()
    got = next(iter(loaded.infer(x[:3]).values()))
    loaded.close()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)

    class Renamed(nn.Module):  # a different input name: clients' requests would break
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(image)
            return out

    with pytest.raises(prune.CompressionConfigError, match="inputs .* differ from version 1"):
        pack_derived(
            Renamed(result.model).eval(),
            parent=repo / "cnn",
            version=1,
            op="prune-channels",
            config={},
            sample_input=x[:4],
            measure=fast,
        )
    assert list_versions(repo / "cnn") == [1, 2]
