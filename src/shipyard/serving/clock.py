"""The batcher's time source: monotonic nanoseconds and timers, injectable for tests.

`MonotonicClock` is the real one (`time.perf_counter_ns`, the running loop's
`call_later`); a test passes its own `Clock` to drive queue delays and run timings
without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


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
    """The real clock: `time.perf_counter_ns` and the running loop's timers."""

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)


MONOTONIC = MonotonicClock()
