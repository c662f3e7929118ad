"""Pruning schedules follow TF-MOT's formulas and validation."""

from __future__ import annotations

import pytest

from shipyard.compression.schedules import ConstantSparsity, PolynomialDecay


def tfmot_polynomial(
    step: int, initial: float, final: float, begin: int, end: int, power: float
) -> float:
    # tfmot.sparsity.keras.PolynomialDecay: p = clip((step - begin) / (end - begin), 0, 1)
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return (initial - final) * (1 - p) ** power + final


@pytest.mark.parametrize("step", [0, 1, 100, 250, 500, 999, 1000, 1500])
def test_polynomial_decay_matches_tfmot(step: int) -> None:
    schedule = PolynomialDecay(
        initial_sparsity=0.1, final_sparsity=0.8, begin_step=0, end_step=1000
    )
    _, sparsity = schedule(step)
    assert sparsity == pytest.approx(tfmot_polynomial(step, 0.1, 0.8, 0, 1000, 3.0))


def test_polynomial_decay_known_points_and_turns() -> None:
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000, frequency=100)
    assert schedule(0) == (True, 0.0)
    assert schedule(500) == (True, pytest.approx(0.7))  # 0.8 - 0.8 * 0.5**3
    assert schedule(50)[0] is False
    assert schedule(1000) == (True, pytest.approx(0.8))
    assert schedule(1100)[0] is False  # past end_step: masks stay, no more updates
    late = PolynomialDecay(0.2, 0.6, begin_step=200, end_step=400, power=1, frequency=50)
    assert late(100) == (False, pytest.approx(0.2))
    assert late(300) == (True, pytest.approx(0.4))
    assert late(325)[0] is False


def test_constant_sparsity() -> None:
    schedule = ConstantSparsity(0.5, begin_step=200)
    assert schedule(100) == (False, 0.5)
    assert schedule(200) == (True, 0.5)
    assert schedule(10_000) == (True, 0.5)
    bounded = ConstantSparsity(target_sparsity=0.3, begin_step=0, end_step=300, frequency=100)
    assert [bounded(s)[0] for s in (0, 100, 150, 300, 400)] == [True, True, False, True, False]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConstantSparsity(1.0),
        lambda: ConstantSparsity(-0.1),
        lambda: ConstantSparsity(0.5, begin_step=-1),
        lambda: ConstantSparsity(0.5, begin_step=10, end_step=5),
        lambda: ConstantSparsity(0.5, frequency=0),
        lambda: PolynomialDecay(0.0, 1.0, 0, 100),
        lambda: PolynomialDecay(0.0, 0.5, 100, 100),
        lambda: PolynomialDecay(0.0, 0.5, 0, -1),
    ],
)
def test_invalid_schedules_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
