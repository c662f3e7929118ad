"""Run times per batch key, and whether a batch is cheap enough to run on the event loop.

Handing a batch to a worker thread and back costs tens of microseconds of loop time plus a
thread wake-up; for a model that runs in a few microseconds that handoff is most of the
work. `RunTimer.timed` runs the model (on whichever thread calls it) and notes how long it
took per row; `inline` is true once at least `INLINE_AFTER` runs of that key have been
timed and the slowest recent one, scaled to the batch's rows, stays within the budget.
"""

from __future__ import annotations

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
    """Recent run times of one batch key: the slowest of the last few, per row."""

    __slots__ = ("ns_per_row", "runs", "window")

    def __init__(self) -> None:
        self.runs = 0
        self.window: deque[float] = deque(maxlen=8)
        self.ns_per_row = float("inf")

    def note(self, elapsed_ns: int, rows: int) -> None:
        self.runs += 1
        self.window.append(elapsed_ns / rows)
        self.ns_per_row = max(self.window)


class RunTimer:
    """The timing table of one batcher and its inline budget."""

    def __init__(self, clock: Clock, *, inline_max_us: int = INLINE_MAX_US) -> None:
        self.clock = clock
        self.timings: dict[Hashable, Timing] = {}
        self._inline_max_ns = inline_max_us * 1000

    def inline(self, key: Hashable, rows: int) -> bool:
        """Whether a batch of `rows` rows of `key` may run on the loop, by recent timings."""
        timing = self.timings.get(key)
        if timing is None or timing.runs < INLINE_AFTER:
            return False
        return timing.ns_per_row * (rows or 1) <= self._inline_max_ns

    def timed(self, key: Hashable, rows: int, run: Callable[[], T]) -> tuple[T, int]:
        """`run()` and its duration in ns, noted for `key` (per row)."""
        started = self.clock.now_ns()
        result = run()
        elapsed = self.clock.now_ns() - started
        timing = self.timings.get(key)
        if timing is None:
            if len(self.timings) >= _MAX_TIMED_KEYS:
                self.timings.clear()
            timing = self.timings[key] = Timing()
        timing.note(elapsed, rows or 1)
        return result, elapsed
