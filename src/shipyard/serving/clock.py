"""The batcher's time source: monotonic nanoseconds and timers, injectable for tests.

`MonotonicClock` is the real one (`time.perf_counter_ns`, the running loop's
`call_later`, `fine_timers` below 10 ms); a test passes its own `Clock` to drive queue
delays and run timings without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from shipyard.serving import fine_timers


class Timer(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and timers on the event loop."""

    def now_ns(self) -> int:
        """Monotonic nanoseconds (any origin; only differences matter)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` on the running event loop after `delay_s` seconds."""
        ...


class MonotonicClock:
    """The real clock: `time.perf_counter_ns`, and the running loop's timers, or for a
    delay under `FINE_BELOW_S` its `fine_timers` (the loop's are whole milliseconds)."""

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        loop = asyncio.get_running_loop()
        if delay_s < FINE_BELOW_S:
            fine = fine_timers.for_loop(loop)
            if fine is not None:
                return fine.call_later(delay_s, callback)
        return loop.call_later(delay_s, callback)


FINE_BELOW_S = 0.01
"""Delays shorter than this (a batch's queue delay, typically) are timed to the
microsecond: rounded to a millisecond they would be 5 % off or more."""


MONOTONIC = MonotonicClock()
