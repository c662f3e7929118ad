"""Dynamic batcher: queue requests, join them along dim 0, run on worker threads, split back.

The event loop only queues and dispatches; `run` executes on a thread pool with `workers`
threads (ONNX Runtime releases the GIL), so up to `workers` batches run at once. While all
workers are busy requests keep queueing, so batches grow with load on their own.

Rules:
- Requests join a batch only when their inputs agree on everything but dim 0 (names,
  dtypes, trailing dims); the oldest queued request decides which batch forms next.
- A batch runs when it holds `max_batch_size` rows or its oldest request has waited
  `max_queue_delay_us`, whichever comes first; a request larger than the limit runs alone.
- More than `max_queue_size` waiting requests -> `Overloaded` (HTTP 503 + Retry-After).
- Inputs must be validated before `submit`. If a batch still fails, or its outputs cannot
  be split by dim 0, each request is rerun alone, so one bad request fails only itself.
- Tiny models run on the event loop: for a model that runs in a few microseconds (a
  scikit-learn classifier) the thread handoff is most of the work, and with batching off
  it serialises every request behind a round trip (measured: 3.1k req/s off the loop, 5.1k
  inline). Every run is timed per batch key (`run_timing.RunTimer`); a batch runs inline
  once its key's recent runs, scaled to its rows, stay within `inline_max_us` (default
  100 µs), so the loop is never blocked longer than about that. A key never timed, or over
  the budget, runs on the worker threads, so a slow or blocking model never runs inline.
- Time comes from `clock` (`clock.MonotonicClock` unless a test passes its own): queue
  delays, queue and compute times, and the run timings.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shipyard.serving.clock import MONOTONIC, Clock
from shipyard.serving.errors import ModelNotReady, Overloaded
from shipyard.serving.run_timing import INLINE_MAX_US, RunTimer
from shipyard.serving.settings import BatchingSettings

log = logging.getLogger("shipyard.serving.batching")

RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]
"""Runs one (possibly batched) feed; an empty output list means every output."""
BatchHook = Callable[[int, int, int], None]
"""Called after each batch with (rows, requests, compute_ns)."""

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class BatchResult:
    """What one request gets back, with where its time went."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_ns: int
    batch_rows: int


class _Pending:
    __slots__ = ("enqueued_ns", "future", "inputs", "key", "outputs", "rows")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        future: asyncio.Future[BatchResult],
        enqueued_ns: int,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.key, self.rows = batch_key(inputs)


def batch_key(inputs: Mapping[str, np.ndarray]) -> tuple[BatchKey | None, int]:
    """(key, rows): requests with equal keys can be concatenated; None = must run alone."""
    dims = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if len(dims) != 1 or (rows := dims.pop()) <= 0:
        return None, 0
    key = tuple(sorted((n, a.dtype.str, tuple(a.shape[1:])) for n, a in inputs.items()))
    return key, rows


class Batcher:
    """One queue and worker pool for one model version."""

    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        batching: BatchingSettings,
        workers: int = 1,
        on_batch: BatchHook | None = None,
        retry_after_s: int = 1,
        inline_max_us: int = INLINE_MAX_US,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.name = name
        self.enabled = batching.enabled is not False
        self.max_batch_size = batching.max_batch_size
        self.max_delay_ns = batching.max_queue_delay_us * 1000
        self.max_queue_size = batching.max_queue_size
        self.retry_after_s = retry_after_s
        self.workers = workers
        self._run = run
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"shipyard-{name}"
        )
        self._slots = asyncio.Semaphore(workers)
        self._pending: deque[_Pending] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self.clock = clock
        self.timer = RunTimer(clock, inline_max_us=inline_max_us)
        """Run times per batch key: what decides whether a batch runs inline."""

    @property
    def depth(self) -> int:
        """Requests queued and not yet dispatched."""
        return len(self._pending)

    async def submit(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str] = ()
    ) -> BatchResult:
        """Queue one validated request and wait for its outputs."""
        if self._closing:
            raise ModelNotReady(self.name, reason="it is being unloaded; retry")
        if len(self._pending) >= self.max_queue_size:
            raise Overloaded(
                self.name, queue_size=len(self._pending), retry_after=self.retry_after_s
            )
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._dispatcher_done)
        item = _Pending(inputs, list(outputs), loop.create_future(), self.clock.now_ns())
        self._pending.append(item)
        self._wake()
        return await item.future

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, stop the workers."""
        self._closing = True
        self._wake()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self, timeout_ns: int | None) -> None:
        """Until the next submit/close, or `timeout_ns`, whichever comes first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        handle = None
        if timeout_ns is not None:
            handle = self.clock.call_later(timeout_ns / 1e9, lambda: _resolve(waiter))
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _dispatch(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                await self._sleep(None)
            await self._slots.acquire()
            batch = await self._form_batch()
            if not batch:
                self._slots.release()
                continue
            if self._inline(batch):
                try:
                    done = self._run_inline(batch)
                finally:
                    self._slots.release()
                if done:
                    await asyncio.sleep(0)  # let the loop read and answer between batches
                    continue
                await self._slots.acquire()  # it failed: rerun it on the workers, one by one
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _form_batch(self) -> list[_Pending]:
        self._drop_cancelled()
        if not self._pending:
            return []
        head = self._pending[0]
        if self.enabled and head.key is not None and head.rows < self.max_batch_size:
            deadline = head.enqueued_ns + self.max_delay_ns
            while not self._closing and not head.future.done():
                remaining = deadline - self.clock.now_ns()
                if remaining <= 0 or self._rows_like(head) >= self.max_batch_size:
                    break
                await self._sleep(remaining)
        return self._take()

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    def _rows_like(self, head: _Pending) -> int:
        return sum(p.rows for p in self._pending if p.key == head.key and not p.future.done())

    def _take(self) -> list[_Pending]:
        """Pop the oldest live request's batch from the queue, keeping the others' order."""
        batch: list[_Pending] = []
        keep: deque[_Pending] = deque()
        rows, solo = 0, True
        for item in self._pending:
            if item.future.done():
                continue
            if not batch:
                batch.append(item)
                rows, solo = item.rows, not self.enabled or item.key is None
            elif not solo and item.key == batch[0].key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._pending = keep
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self._slots.release()

    def _inline(self, batch: list[_Pending]) -> bool:
        """Whether this batch is cheap enough, by its key's recent timings, to run on the loop."""
        return self.timer.inline(batch[0].key, sum(i.rows for i in batch))

    def _timed(
        self, key: BatchKey | None, rows: int, feed: dict[str, np.ndarray], names: list[str]
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run the model (on whichever thread calls this) and note how long it took."""
        return self.timer.timed(key, rows, lambda: self._run(feed, names))

    def _run_inline(self, batch: list[_Pending]) -> bool:
        """Run a cheap batch on the loop and answer it; False (nothing answered) if it fails."""
        dispatched = self.clock.now_ns()
        names = _union(item.outputs for item in batch)
        rows = sum(i.rows for i in batch)
        try:
            results, compute_ns = self._timed(batch[0].key, rows, _feed(batch), names)
        except Exception as exc:
            if len(batch) > 1:
                return False  # the workers rerun it with the usual one-by-one fallback
            _fail(batch[0], exc)
            return True
        parts = _split(results, [i.rows for i in batch]) if len(batch) > 1 else [results]
        if parts is None:
            return False  # the workers rerun it, find the same and turn batching off
        self._deliver(batch, parts, dispatched, compute_ns)
        return True

    async def _run_batch(self, batch: list[_Pending]) -> None:
        dispatched = self.clock.now_ns()
        names = _union(item.outputs for item in batch)
        try:
            feed = _feed(batch)
            rows = sum(i.rows for i in batch)
            loop = asyncio.get_running_loop()
            results, compute_ns = await loop.run_in_executor(
                self._executor, self._timed, batch[0].key, rows, feed, names
            )
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning(
                "batch of %d requests for %s failed (%s); rerunning them one by one",
                len(batch),
                self.name,
                exc,
            )
            for item in batch:
                await self._run_batch([item])
            return
        parts = _split(results, [i.rows for i in batch]) if len(batch) > 1 else [results]
        if parts is None:
            log.warning(
                "outputs of %s do not follow the batch (dim 0); batching turned off", self.name
            )
            self.enabled = False
            for item in batch:
                await self._run_batch([item])
            return
        self._deliver(batch, parts, dispatched, compute_ns)

    def _deliver(
        self,
        batch: list[_Pending],
        parts: list[dict[str, np.ndarray]],
        dispatched: int,
        compute_ns: int,
    ) -> None:
        rows = sum(i.rows for i in batch) or 1
        if self._on_batch is not None:
            self._on_batch(rows, len(batch), compute_ns)
        for item, outputs in zip(batch, parts, strict=True):
            if not item.future.done():
                wanted = item.outputs or list(outputs)
                item.future.set_result(
                    BatchResult(
                        outputs={n: outputs[n] for n in wanted},
                        queue_ns=dispatched - item.enqueued_ns,
                        compute_ns=compute_ns,
                        batch_rows=rows,
                    )
                )

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("batcher for %s stopped: %r", self.name, exc)
        self._closing = True
        for item in self._pending:
            _fail(item, ModelNotReady(self.name, reason=f"its batcher failed ({exc!r})"))
        self._pending.clear()


def _feed(batch: list[_Pending]) -> dict[str, np.ndarray]:
    if len(batch) == 1:
        return batch[0].inputs
    return {n: np.concatenate([i.inputs[n] for i in batch]) for n in batch[0].inputs}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _fail(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)


def _union(requested: Iterable[list[str]]) -> list[str]:
    """Outputs to compute for a batch: all when any request wants all, else the union."""
    names: dict[str, None] = {}
    for outputs in requested:
        if not outputs:
            return []
        names.update(dict.fromkeys(outputs))
    return list(names)


def _split(results: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]] | None:
    """Slice every output back per request along dim 0, or None when shapes do not allow it."""
    total = sum(rows)
    if any(a.ndim == 0 or a.shape[0] != total for a in results.values()):
        return None
    offsets = np.cumsum([0, *rows]).tolist()
    return [
        {n: a[offsets[i] : offsets[i + 1]] for n, a in results.items()} for i in range(len(rows))
    ]
