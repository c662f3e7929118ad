"""The batcher's waiting requests: one FIFO per priority level, and which of them batch next.

Level 1 is the highest priority: every queued level-1 request is taken before any level-2
one (Triton's `priority_levels`). A request leaves the queue when it joins a batch, or
before that when its deadline passes, its caller is cancelled or its client is gone
(`Pending.gone`, checked whenever the queue is scanned); `live` counts those still waiting,
and entries that left early are skipped and discarded lazily.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from shipyard.processing.padding import BatchPadding

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


class BatchResult(NamedTuple):
    """What one request gets back, with where its time went."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_ns: int
    batch_rows: int


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request and its future."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    future: asyncio.Future[BatchResult]
    enqueued_ns: int
    level: int = 0
    """0-based: priority 1 is level 0."""
    gone: Callable[[], bool] | None = None
    """True once the client that sent it is gone (an HTTP connection closed)."""
    pad: BatchPadding | None = None
    """Set when its token inputs may be padded to a longer batch-mate's length."""
    queued: bool = field(default=False, init=False)
    key: BatchKey | None = field(default=None, init=False)
    rows: int = field(default=0, init=False)
    length: int | None = field(default=None, init=False)
    """Its sequence length when `pad` applies to its inputs, else None."""

    def __post_init__(self) -> None:
        self.length = self.pad.length(self.inputs) if self.pad is not None else None
        padded = frozenset(self.pad.values) if self.length is not None and self.pad else None
        self.key, self.rows = batch_key(self.inputs, padded=padded)


def batch_key(
    inputs: Mapping[str, np.ndarray], *, padded: frozenset[str] | None = None
) -> tuple[BatchKey | None, int]:
    """(key, rows): requests with equal keys can be concatenated; None = must run alone.

    Inputs in `padded` are [N, L] token inputs the batcher pads: L is left out of the key
    (-1), so requests of any length join."""
    if len(inputs) == 1:  # most models: one input, no set and no sort
        ((name, array),) = inputs.items()
        rows = array.shape[0] if array.ndim else -1
        if rows <= 0:
            return None, 0
        shape = (-1,) if padded and name in padded else array.shape[1:]
        return ((name, array.dtype.str, shape),), rows
    dims = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if len(dims) != 1 or (rows := dims.pop()) <= 0:
        return None, 0
    key = tuple(
        sorted(
            (n, a.dtype.str, (-1,) if padded and n in padded else tuple(a.shape[1:]))
            for n, a in inputs.items()
        )
    )
    return key, rows


class RequestQueue:
    """Waiting requests by priority level; `on_gone` is told of each whose client left."""

    def __init__(self, levels: int, *, on_gone: Callable[[Pending], None]) -> None:
        self._levels: list[deque[Pending]] = [deque() for _ in range(max(1, levels))]
        self._on_gone = on_gone
        self.live = 0
        """Requests waiting (not batched, expired, cancelled or gone)."""

    @property
    def levels(self) -> int:
        return len(self._levels)

    def push(self, item: Pending) -> None:
        item.queued = True
        self._levels[item.level].append(item)
        self.live += 1

    def leave(self, item: Pending) -> bool:
        """Take `item` out of the count of waiting requests; False if it was not waiting."""
        if not item.queued:
            return False
        item.queued = False
        self.live -= 1
        return True

    def head(self) -> Pending | None:
        """The oldest waiting request of the highest priority, None when none waits."""
        for level in self._levels:
            while level and not self._waiting(level[0]):
                level.popleft()
            if level:
                return level[0]
        return None

    def rows_like(self, head: Pending) -> int:
        """Rows of the waiting requests that could join `head`'s batch."""
        return sum(p.rows for p in self._iter() if p.key == head.key)

    def take(self, *, batching: bool, max_rows: int) -> list[Pending]:
        """Pop the head's batch: the head, then compatible requests in priority order."""
        batch: list[Pending] = []
        rows, solo = 0, True
        for index, level in enumerate(self._levels):
            keep: deque[Pending] = deque()
            for item in level:
                if not self._waiting(item):
                    continue
                if not batch:
                    batch.append(item)
                    rows, solo = item.rows, not batching or item.key is None
                elif not solo and item.key == batch[0].key and rows + item.rows <= max_rows:
                    batch.append(item)
                    rows += item.rows
                else:
                    keep.append(item)
            self._levels[index] = keep
        for item in batch:
            self.leave(item)
        return batch

    def clear(self) -> list[Pending]:
        """Every waiting request, removed from the queue."""
        items = [item for item in self._iter()]
        for item in items:
            self.leave(item)
        for level in self._levels:
            level.clear()
        return items

    def _iter(self) -> Iterator[Pending]:
        for level in self._levels:
            for item in level:
                if item.queued and not item.future.done():
                    yield item

    def _waiting(self, item: Pending) -> bool:
        if not item.queued:
            return False
        if item.future.done():  # answered while queued (cancelled): no longer waiting
            self.leave(item)
            return False
        if item.gone is not None and item.gone():
            self.leave(item)
            self._on_gone(item)
            return False
        return True
