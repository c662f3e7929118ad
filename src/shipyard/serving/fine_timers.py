"""Timers finer than a millisecond on the event loop: one Linux timerfd that the loop watches.

uvloop (libuv) keeps time in whole milliseconds: `call_later(d)` rounds `d` to the nearest
millisecond and runs a delay under 0.5 ms as `call_soon`, and asyncio's own loop rounds its
poll timeout up to a millisecond. A batch waiting out a 500 µs queue delay on uvloop was
therefore re-checked on every turn of the loop until the delay had passed (five or six
turns per batch under load, each a system call and a step of the dispatcher): CPU taken
from the requests, and from the clients on the same cores, only to wait.

`FineTimers` keeps the loop's short timers in a heap and one timerfd
(`timerfd_create(2)`, CLOCK_MONOTONIC, absolute deadlines) armed at the earliest; the
loop wakes when it expires, to the microsecond, and runs what is due. A timer is never
run early. Called off, a timer at the head re-arms the fd at the next one (or disarms it),
so a batch that filled before its delay causes no wake-up later.

`for_loop(loop)` is the running loop's instance, None where timerfd is not available
(not Linux, or the call is refused): the caller then uses the loop's own timers.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable

log = logging.getLogger("shipyard.serving")

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class FineTimer:
    """One scheduled callback (`cancel()` calls it off)."""

    __slots__ = ("_owner", "callback", "cancelled", "deadline_ns")

    def __init__(self, owner: FineTimers, deadline_ns: int, callback: Callable[[], None]) -> None:
        self._owner = owner
        self.deadline_ns = deadline_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._owner.called_off(self)


class FineTimers:
    """The short timers of one event loop, on one timerfd it watches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL) -> None:
        self._loop = weakref.ref(loop)  # held by the loop (its reader), not holding it
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd: int = fd
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._heap: list[tuple[int, int, FineTimer]] = []
        self._order = itertools.count()
        """Ties between equal deadlines go to the timer scheduled first."""
        self._armed_ns = 0
        """The deadline the fd is armed at; 0: disarmed."""
        loop.add_reader(fd, self._expired)
        weakref.finalize(loop, os.close, fd)  # the fd lives as long as its loop

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FineTimer:
        """Call `callback` on the loop once `delay_s` seconds have passed, not earlier."""
        deadline = time.monotonic_ns() + max(0, int(delay_s * 1e9))
        timer = FineTimer(self, deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._order), timer))
        if not self._armed_ns or deadline < self._armed_ns:
            self._arm(deadline)
        return timer

    def _arm(self, deadline_ns: int) -> None:
        """Set the fd to expire at `deadline_ns` (0: disarm)."""
        spec = self._spec
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_ns = deadline_ns

    def called_off(self, timer: FineTimer) -> None:
        """`timer` was cancelled (by `FineTimer.cancel`)."""
        heap = self._heap
        if heap and heap[0][2] is timer:  # the one the fd waits for: wait for the next
            self._drop_called_off()
            self._arm(heap[0][0] if heap else 0)

    def _drop_called_off(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)

    def _expired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # re-armed or disarmed since it became readable
            return
        self._armed_ns = 0
        heap = self._heap
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True  # run once; a later cancel() is a no-op
            try:
                timer.callback()
            except Exception as exc:  # as the loop reports a failing callback
                loop = self._loop()
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "exception in a fine timer's callback", "exception": exc}
                    )
        self._drop_called_off()
        if heap:
            self._arm(heap[0][0])


_LIBC: ctypes.CDLL | None = None
_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FineTimers | None] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> FineTimers | None:
    """`loop`'s fine timers (made on first use), None where timerfd is not available."""
    try:
        return _BY_LOOP[loop]
    except KeyError:
        pass
    timers = None
    if sys.platform == "linux":
        global _LIBC
        try:
            if _LIBC is None:
                _LIBC = ctypes.CDLL(None, use_errno=True)
            timers = FineTimers(loop, _LIBC)
        except (OSError, AttributeError) as exc:
            log.debug("no timerfd (%s): short timers use the event loop's", exc)
    _BY_LOOP[loop] = timers
    return timers
