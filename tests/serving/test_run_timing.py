"""RunTimer: which batches may run on the event loop, from the runs timed so far."""

from __future__ import annotations

import time

import onnx
import pytest

from shipyard.runtime.onnxrt import OnnxRuntime
from shipyard.serving.clock import MONOTONIC, Timer
from shipyard.serving.loader import computes_on_caller
from shipyard.serving.run_timing import INLINE_AFTER, RunTimer, Timing


class StepClock:
    """A clock that moves only when a timed run says how long it took."""

    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns

    def call_later(self, delay_s: float, callback: object) -> Timer:
        raise AssertionError("RunTimer sets no timers")


def timer_with(runs: list[tuple[int, int]], *, budget_us: int = 100) -> RunTimer:
    clock = StepClock()
    timer = RunTimer(clock, inline_max_us=budget_us)
    for elapsed_ns, rows in runs:

        def run(elapsed_ns: int = elapsed_ns) -> None:
            clock.ns += elapsed_ns

        timer.timed("k", rows, run)
    return timer


def test_a_run_bounds_smaller_batches_and_scales_linearly_to_larger_ones() -> None:
    timing = Timing()
    timing.note(20_000, 1)  # 1 row: 20 µs, nearly all of it the fixed cost of a run
    timing.note(28_000, 32)
    assert timing.estimate_ns(1) == 20_000
    assert timing.estimate_ns(8) == 28_000  # not 8 × 20 µs: 32 rows ran in 28 µs
    assert timing.estimate_ns(64) == 56_000
    assert Timing().estimate_ns(4) == float("inf")


def test_a_tiny_model_under_load_runs_inline_and_a_slow_one_never_does() -> None:
    tiny = timer_with([(20_000, 1), (15_000, 8), (28_000, 32)])
    assert tiny.inline("k", 16) and tiny.inline("k", 32)
    assert not tiny.inline("k", 256)  # 8 × 28 µs: over the 100 µs budget
    assert not tiny.inline("other", 1)  # never timed

    slow = timer_with([(2_000_000, 1), (3_000_000, 32)] * 4)
    assert not any(slow.inline("k", rows) for rows in (1, 8, 32))


@pytest.mark.parametrize("runs", range(INLINE_AFTER))
def test_a_key_runs_inline_only_after_enough_timed_runs(runs: int) -> None:
    timer = timer_with([(1_000, 1)] * runs)
    assert not timer.inline("k", 1)
    assert timer_with([(1_000, 1)] * INLINE_AFTER).inline("k", 1)


def test_inline_is_off_with_a_zero_budget() -> None:
    assert not timer_with([(1, 1)] * 8, budget_us=0).inline("k", 1)


def test_thread_cpu_notes_a_run_without_the_waits_in_it() -> None:
    """A run that waits (for the GIL, for the CPU; here for a sleep) is noted by its CPU
    time with thread_cpu, by the clock without it; the caller gets the wall time."""
    waited = 0.02

    def run() -> str:
        time.sleep(waited)
        return "done"

    cpu = RunTimer(MONOTONIC, thread_cpu=True)
    result, elapsed = cpu.timed("k", 1, run)
    assert result == "done" and elapsed >= waited * 1e9
    assert cpu.timings["k"].estimate_ns(1) < waited * 1e9 / 4

    wall = RunTimer(MONOTONIC)
    wall.timed("k", 1, run)
    assert wall.timings["k"].estimate_ns(1) >= waited * 1e9


def test_only_onnx_runtime_on_the_cpu_is_timed_by_thread_cpu(
    affine_model: onnx.ModelProto,
) -> None:
    runtime = OnnxRuntime(affine_model.SerializeToString(), inputs=[], outputs=[])
    assert runtime.providers == ["CPUExecutionProvider"]
    assert computes_on_caller(runtime)
    assert not computes_on_caller(object())
