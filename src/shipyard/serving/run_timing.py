"""Run times per batch key, and whether a batch is cheap enough to run on the event loop.

Handing a batch to a worker thread and back costs tens of microseconds of loop time plus a
thread wake-up; for a model that runs in a few microseconds that handoff is most of the
work. `RunTimer.timed` runs the model (on whichever thread calls it) and notes how long it
took and at how many rows; `inline` is true once at least `INLINE_AFTER` runs of that key
have been timed and the estimate for the batch's rows stays within the budget.

The estimate assumes a run costs a fixed part plus a part per row (a + b·rows, a, b ≥ 0), as
ONNX Runtime's runs do: then a run of r rows that took t bounds any batch of n rows by
t·max(1, n/r) (no fewer rows cost more; linear scaling overstates the fixed part), and the
estimate is the tightest of those bounds over the last few runs. Scaling every run per row
instead (t/r·n) charged a batch of 8 eight times a 1-row run's fixed cost: under load, a
model that runs 32 rows in 28 µs never ran inline.

A run timed by the clock counts what is not the run: on a worker thread, the wait for the
GIL when the run ends (the loop holds it, often for the whole switch interval, 5 ms), and on
the loop or off it, the time the process is not scheduled (several servers and a load
generator sharing two cores). Under load a 20 µs model was noted at 150 µs to 7 ms, so it
never ran inline once load began. For a runtime that computes on the calling thread (ONNX
Runtime on the CPU provider: with one intra-op thread the caller runs every node, with more
it takes part in each parallel section), `thread_cpu` notes the calling thread's CPU time
instead, which counts neither. Other runtimes (a GPU provider that waits for its device
without using the CPU) keep the clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TypeVar

from shipyard.serving.clock import Clock

INLINE_MAX_US = 100
"""Default longest estimated run (µs) that may execute on the event loop; 0 = never inline."""
INLINE_AFTER = 3
"""Timed runs of a batch key before it may run inline."""
_MAX_TIMED_KEYS = 256
"""Timing table bound (keys differ by trailing dims: dynamic shapes could make many)."""

T = TypeVar("T")


class Timing:
    """Recent runs of one batch key: (elapsed ns, rows) of the last few."""

    __slots__ = ("runs", "window")

    def __init__(self) -> None:
        self.runs = 0
        self.window: deque[tuple[int, int]] = deque(maxlen=8)

    def note(self, elapsed_ns: int, rows: int) -> None:
        self.runs += 1
        self.window.append((elapsed_ns, max(rows, 1)))

    def estimate_ns(self, rows: int) -> float:
        """The estimated run time of a batch of `rows` rows (inf before any run)."""
        rows = max(rows, 1)
        return min(
            (elapsed * max(1.0, rows / ran) for elapsed, ran in self.window),
            default=float("inf"),
        )


class RunTimer:
    """The timing table of one batcher and its inline budget."""

    def __init__(
        self, clock: Clock, *, inline_max_us: int = INLINE_MAX_US, thread_cpu: bool = False
    ) -> None:
        self.clock = clock
        self._thread_cpu = thread_cpu
        self.timings: dict[Hashable, Timing] = {}
        self._inline_max_ns = inline_max_us * 1000

    def inline(self, key: Hashable, rows: int) -> bool:
        """Whether a batch of `rows` rows of `key` may run on the loop, by recent timings."""
        timing = self.timings.get(key)
        if timing is None or timing.runs < INLINE_AFTER:
            return False
        return timing.estimate_ns(rows) <= self._inline_max_ns

    def timed(self, key: Hashable, rows: int, run: Callable[[], T]) -> tuple[T, int]:
        """`run()` and its duration in ns (wall time), noted for `key` and `rows` (the
        thread's CPU time instead, with `thread_cpu`)."""
        thread_cpu = self._thread_cpu
        started = self.clock.now_ns()
        cpu_started = time.thread_time_ns() if thread_cpu else 0
        result = run()
        elapsed = self.clock.now_ns() - started
        noted = time.thread_time_ns() - cpu_started if thread_cpu else elapsed
        timing = self.timings.get(key)
        if timing is None:
            if len(self.timings) >= _MAX_TIMED_KEYS:
                self.timings.clear()
            timing = self.timings[key] = Timing()
        timing.note(noted, rows)
        return result, elapsed
