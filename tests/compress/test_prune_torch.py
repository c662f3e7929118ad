"""PyTorch pruning: gradual magnitude pruning with masks, strip, and channel removal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shipyard.compress import prune  # noqa: E402


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
    pytest.importorskip("shipyard.importers.pytorch")
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
