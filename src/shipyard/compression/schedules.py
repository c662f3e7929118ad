"""Pruning schedules with TF-MOT's semantics: when to prune, and to which sparsity.

A schedule maps a training step to `(should_prune, sparsity)`, exactly as
`tfmot.sparsity.keras.PolynomialDecay` and `ConstantSparsity` do, so recipes carry over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def _check_sparsity(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_steps(begin_step: int, end_step: int, frequency: int) -> None:
    if begin_step < 0:
        raise ValueError(f"begin_step must be >= 0, got {begin_step}")
    if end_step != -1 and end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step}) or -1")
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")


def _should_prune(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """In [begin_step, end_step] (end -1 = forever) and on a multiple of `frequency`."""
    in_range = step >= begin_step and (end_step == -1 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


@dataclass(frozen=True)
class ConstantSparsity:
    """Prune to `target_sparsity` every `frequency` steps from `begin_step` to `end_step`."""

    target_sparsity: float
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self) -> None:
        _check_sparsity("target_sparsity", self.target_sparsity)
        _check_steps(self.begin_step, self.end_step, self.frequency)

    def sparsity(self, step: int) -> float:
        return self.target_sparsity

    def __call__(self, step: int) -> tuple[bool, float]:
        should = _should_prune(step, self.begin_step, self.end_step, self.frequency)
        return should, self.sparsity(step)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "ConstantSparsity", **asdict(self)}


@dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity rises from `initial_sparsity` to `final_sparsity` along a power curve.

    s(t) = final + (initial - final) * (1 - p)^power, p = clip((t - begin) / (end - begin), 0, 1)
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self) -> None:
        _check_sparsity("initial_sparsity", self.initial_sparsity)
        _check_sparsity("final_sparsity", self.final_sparsity)
        _check_steps(self.begin_step, self.end_step, self.frequency)
        if self.end_step <= self.begin_step:
            raise ValueError(
                f"PolynomialDecay needs end_step ({self.end_step}) > begin_step ({self.begin_step})"
            )

    def sparsity(self, step: int) -> float:
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, progress))
        decay = (1.0 - progress) ** self.power
        return float(self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * decay)

    def __call__(self, step: int) -> tuple[bool, float]:
        should = _should_prune(step, self.begin_step, self.end_step, self.frequency)
        return should, self.sparsity(step)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "PolynomialDecay", **asdict(self)}


PruningSchedule = ConstantSparsity | PolynomialDecay
