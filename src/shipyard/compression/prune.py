"""Pruning for PyTorch models: gradual magnitude pruning (TF-MOT style) and channel removal.

    pruned = prune.magnitude(model, schedule=prune.PolynomialDecay(0.0, 0.8, 0, 1000))
    for batch in data: ...; optimizer.step(); pruned.step()
    shipyard.pack(prune.strip(pruned), name="digits", repo="models/")

Magnitude pruning zeros weights (masks via torch.nn.utils.prune): the file shrinks under
gzip, latency on dense kernels does not. `channels()` removes whole channels with
torch-pruning, so the model really gets smaller and faster; fine-tune it afterwards, or let
`channels_and_finetune()` do both and return the lineage record for `pack_derived()`:

    result = prune.channels_and_finetune(model, x[:1], x, y, ratio=0.5, epochs=5)
    compress.pack_derived(result.model, parent="models/digits", op="prune-channels",
                          config=result.config, sample_input=x[:16], eval_data="eval.npz")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from shipyard.compression.errors import CompressionConfigError
from shipyard.compression.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = [
    "ChannelPruneResult",
    "CompressionConfigError",
    "ConstantSparsity",
    "MagnitudePruning",
    "PolynomialDecay",
    "channels",
    "channels_and_finetune",
    "count_parameters",
    "finetune",
    "magnitude",
    "sparsity",
    "strip",
    "widths",
]

Importance = Literal["l1", "l2", "random"]
DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class MagnitudePruning(nn.Module):
    """Wraps a model: forward is the model's; `step()` once per training step updates masks.

    Like TF-MOT, each layer gets the scheduled sparsity on its own, and a weight pruned
    once stays zero (masks only grow) until `strip()` makes the zeros permanent.
    """

    def __init__(
        self, model: nn.Module, schedule: PruningSchedule, layers: tuple[type[nn.Module], ...]
    ) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.iteration = 0
        self.targets = [m for m in model.modules() if isinstance(m, layers)]
        if not self.targets:
            names = ", ".join(t.__name__ for t in layers)
            raise CompressionConfigError(f"magnitude pruning: the model has no {names} layers")
        for module in self.targets:
            torch_prune.identity(module, "weight")  # type: ignore[no-untyped-call]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def step(self) -> bool:
        """Advance one training step; prunes when the schedule says so. True if it pruned."""
        should, target = self.schedule(self.iteration)
        self.iteration += 1
        if should:
            self.prune_to(target)
        return should

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Call `step()` after every `optimizer.step()` (a hook, like TF-MOT's callback)."""

        def hook(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
            self.step()

        optimizer.register_step_post_hook(hook)

    @torch.no_grad()
    def prune_to(self, target: float) -> None:
        """Set every layer's mask to zero its `target` fraction of smallest |weight|."""
        for module in self.targets:
            mask = _tensor(module, "weight_mask")
            original = _tensor(module, "weight_orig")
            effective = original * mask
            drop = round(target * effective.numel())
            new_mask = torch.ones_like(mask)
            if drop > 0:
                order = torch.argsort(effective.abs().reshape(-1), stable=True)
                new_mask.view(-1)[order[:drop]] = 0
            mask.copy_(new_mask * mask)
            module.weight = original * mask

    def sparsity(self) -> float:
        """Fraction of zeros over the pruned layers' weights, as they are now."""
        return sparsity(self.model, layers=tuple({type(m) for m in self.targets}))


def magnitude(
    model: nn.Module,
    *,
    schedule: PruningSchedule,
    layers: Sequence[type[nn.Module]] = DEFAULT_LAYERS,
) -> MagnitudePruning:
    """Start gradual magnitude pruning of `model`'s `layers` (in place) under `schedule`."""
    if not isinstance(schedule, ConstantSparsity | PolynomialDecay):
        raise CompressionConfigError("schedule must be prune.PolynomialDecay or ConstantSparsity")
    return MagnitudePruning(model, schedule, tuple(layers))


def strip(model: MagnitudePruning | nn.Module) -> nn.Module:
    """Make the masks permanent and return a plain nn.Module (no hooks, no weight_orig)."""
    inner = model.model if isinstance(model, MagnitudePruning) else model
    if not isinstance(inner, nn.Module):
        raise CompressionConfigError("strip() takes the result of prune.magnitude()")
    for module in inner.modules():
        if torch_prune.is_pruned(module):
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    torch_prune.remove(module, hook._tensor_name)  # type: ignore[no-untyped-call]
    return inner


def sparsity(model: nn.Module, *, layers: tuple[type[nn.Module], ...] = DEFAULT_LAYERS) -> float:
    """Fraction of exactly-zero weights over `layers` of `model`."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, layers):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                zeros += int((weight == 0).sum())
                total += weight.numel()
    return zeros / total if total else 0.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def widths(model: nn.Module) -> list[int]:
    """Output channels/features of each Conv and Linear layer, in module order."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            found.append(module.out_channels)
        elif isinstance(module, nn.Linear):
            found.append(module.out_features)
    return found


def channels(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    ratio: float = 0.5,
    importance: Importance = "l1",
    ignored_layers: Sequence[nn.Module] | None = None,
    round_to: int | None = None,
) -> nn.Module:
    """Remove `ratio` of the channels of Conv/Linear layers (in place) with torch-pruning.

    Dependent layers (the next layer's inputs, batch norms) shrink with them. The layer
    producing the model's output is kept whole unless `ignored_layers` says otherwise.
    Accuracy drops until the pruned model is fine-tuned.
    """
    if not 0.0 < ratio < 1.0:
        raise CompressionConfigError(f"ratio must be in (0, 1), got {ratio}")
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise CompressionConfigError(
            "channel pruning needs torch-pruning (pip install torch-pruning)"
        ) from exc
    scorers = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "random": tp.importance.RandomImportance,
    }
    if importance not in scorers:
        raise CompressionConfigError(f"importance must be one of {sorted(scorers)}")
    model.eval()
    ignored = (
        list(ignored_layers)
        if ignored_layers is not None
        else _output_layers(model, example_inputs)
    )
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=scorers[importance](),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=round_to,
    )
    pruner.step()
    return model


@dataclass(frozen=True)
class ChannelPruneResult:
    """A channel-pruned, fine-tuned model and what was done, for a version's lineage."""

    model: nn.Module
    parameters_before: int
    parameters_after: int
    losses: list[float]
    """Mean training loss of each fine-tuning epoch."""
    config: dict[str, Any]
    """Everything needed to redo it: ratio, importance, fine-tuning settings, parameters."""


def finetune(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train `model` (in place) with Adam on cross-entropy over (x, y) class labels.

    Deterministic: shuffling uses its own seeded generator and torch runs deterministic
    kernels meanwhile (the caller's setting is restored). Returns each epoch's mean loss;
    the model is left in eval mode.
    """
    if epochs < 0 or batch_size < 1 or learning_rate <= 0:
        raise CompressionConfigError(
            "fine-tuning needs epochs >= 0, batch_size >= 1 and learning_rate > 0"
        )
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x)
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64) if isinstance(y, np.ndarray) else y)
    if len(inputs) != len(labels) or not len(inputs):
        raise CompressionConfigError(
            f"fine-tuning needs as many labels as input rows (>0): {len(inputs)} rows, "
            f"{len(labels)} labels"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    order = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with _deterministic():
        model.train()
        for _epoch in range(epochs):
            permutation = torch.randperm(len(inputs), generator=order)
            total = 0.0
            for start in range(0, len(inputs), batch_size):
                batch = permutation[start : start + batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(inputs))
        model.eval()
    return losses


def channels_and_finetune(
    model: nn.Module,
    example_inputs: torch.Tensor | np.ndarray,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    ratio: float = 0.5,
    importance: Importance = "l1",
    round_to: int | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> ChannelPruneResult:
    """Remove `ratio` of the channels (`channels()`), then fine-tune on (x, y) class labels.

    `round_to` keeps each layer's width a multiple of it (e.g. 16, ONNX Runtime's NCHWc block
    on AVX-512, so the pruned channels are really saved there). The model is changed in
    place and returned in the result with the lineage config (`op="prune-channels"` in
    `shipyard.compression.pack_derived`).
    """
    example = (
        torch.from_numpy(np.asarray(example_inputs, dtype=np.float32))
        if isinstance(example_inputs, np.ndarray)
        else example_inputs
    )
    before = count_parameters(model)
    channels(model, example, ratio=ratio, importance=importance, round_to=round_to)
    after = count_parameters(model)
    losses = finetune(
        model, x, y, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed
    )
    config: dict[str, Any] = {
        "method": "prune-channels",
        "tool": "torch-pruning",
        "ratio": ratio,
        "importance": importance,
        "round_to": round_to,
        "widths": widths(model),
        "fine_tune": {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "optimizer": "adam",
            "loss": "cross_entropy",
            "seed": seed,
            "rows": len(x),
            "final_loss": round(losses[-1], 6) if losses else None,
        },
        "parameters": {"before": before, "after": after},
    }
    return ChannelPruneResult(
        model=model,
        parameters_before=before,
        parameters_after=after,
        losses=losses,
        config=config,
    )


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise CompressionConfigError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _output_layers(
    model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]
) -> list[nn.Module]:
    """The last Linear/Conv whose output width equals the model's output (the classifier)."""
    with torch.no_grad():
        out = model(*example) if isinstance(example, tuple) else model(example)
    width = out.shape[1] if isinstance(out, torch.Tensor) and out.ndim >= 2 else None
    candidates: list[nn.Module] = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == width)
        or (isinstance(m, nn.Conv2d | nn.Conv1d) and m.out_channels == width)
    ]
    return candidates[-1:]
