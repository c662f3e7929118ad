"""The audit writer's backlog: records in order, never dropped, with a bound calls wait on.

Two kinds of producer put records here. Audited calls (infer, admin) `await wait_for_room()`
before their record is put, on the event loop: while `size` records wait, the call waits too
(an asyncio future, woken from the writer thread through `loop.call_soon_threadsafe`), so a
slow disk slows the load down instead of records vanishing or the loop blocking. The server's
own records (start, stop, model changes, auth refusals, token revocations) are few and come
from code that cannot wait, so `put` never blocks and never refuses, even past the bound.

The writer thread takes the oldest record with `head()`, writes it and only then `pop()`s it:
a writer that dies mid-write leaves the record for the next writer, and order is kept. While
the log cannot be written `bounded` is off: new audited calls are refused at the door instead
(`AuditWriter.problem`), and calls already running must not hang on a disk that may stay full,
so their records join the backlog at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]


class AuditBacklog:
    """A FIFO of records between the event loop (and other threads) and one writer thread."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the audit queue needs room for at least one record")
        self.size = size
        self._items: deque[Record] = deque()
        self._cond = threading.Condition()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._bounded = True
        self._stopping = False
        self.waits = 0
        """Calls that had to wait for room (the backpressure at work)."""
        self.on_wait: Callable[[], None] | None = None
        """Called as a call starts waiting (a metric counts them)."""

    def __len__(self) -> int:
        return len(self._items)

    # -- producers ----------------------------------------------------------------------

    def put(self, record: Record) -> None:
        """Append a record; never blocks and never drops (the bound is for `wait_for_room`)."""
        with self._cond:
            self._items.append(record)
            self._cond.notify()

    async def wait_for_room(self) -> bool:
        """Return once fewer than `size` records wait (at once while unbounded); True if
        it had to wait. Cancelling the wait is safe: the record is then put regardless."""
        if not self._bounded or (len(self._items) < self.size and not self._waiters):
            return False
        loop = asyncio.get_running_loop()
        waited = False
        while True:
            with self._cond:
                if not self._bounded or len(self._items) < self.size:
                    return waited
                future: asyncio.Future[None] = loop.create_future()
                entry = (loop, future)
                self._waiters.append(entry)
            if not waited:
                self.waits += 1
                waited = True
                if self.on_wait is not None:
                    self.on_wait()
            try:
                await future
            finally:
                with self._cond, contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

    @property
    def bounded(self) -> bool:
        return self._bounded

    @bounded.setter
    def bounded(self, value: bool) -> None:
        """Off while the log cannot be written or the writer is stopping: nobody waits."""
        with self._cond:
            self._bounded = value
            if not value:
                self._wake(len(self._waiters))

    # -- the writer thread --------------------------------------------------------------

    def head(self) -> Record | None:
        """The oldest record, waiting for one; None once `stop()` was called and none is left."""
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait()
            return self._items[0] if self._items else None

    def peek(self) -> Record | None:
        """The oldest record, or None when the backlog is empty (never waits)."""
        with self._cond:
            return self._items[0] if self._items else None

    def pop(self) -> None:
        """Remove the oldest record (written) and wake the callers it made room for."""
        with self._cond:
            self._items.popleft()
            self._wake(self.size - len(self._items))
            if not self._items:
                self._cond.notify_all()  # flush() waits for an empty backlog

    def replace_head(self, record: Record) -> None:
        """Put `record` in place of the oldest one (a record the writer cannot write)."""
        with self._cond:
            self._items[0] = record

    def stop(self) -> None:
        """No more waiting for records: `head()` returns None once the backlog is empty."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Block until every record was written (True), or `timeout_s` passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _wake(self, count: int) -> None:
        """Resolve up to `count` waiting futures, each on its own loop (holding `_cond`)."""
        for loop, future in list(self._waiters)[: max(count, 0)]:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
