"""Dynamic batcher: queue requests, join them along dim 0, run on worker threads, split back.

The event loop only queues and dispatches; `run` executes on a thread pool with `workers`
threads (ONNX Runtime releases the GIL), so up to `workers` batches run at once. While all
workers are busy requests keep queueing, so batches grow with load on their own.

Rules:
- Requests join a batch only when their inputs agree on everything but dim 0 (names,
  dtypes, trailing dims); the oldest queued request decides which batch forms next.
  Tokenized text submitted with `pad` (`shipyard.processing.padding`) joins whatever its
  length: its token inputs are padded to the batch's longest, and outputs that carry the
  sequence axis are cut back to each request's own length.
- A batch runs when it holds `max_batch_size` rows or its oldest request has waited
  `max_queue_delay_us`, whichever comes first; a request larger than the limit runs alone.
  It also runs at once when `settled(queued, delay_ns)` says no request can arrive to join
  it (`serving.arrivals`: every HTTP/1.1 connection of the server has a request under way
  and all of them are queued here): waiting out the delay would only add latency.
- More than `max_queue_size` waiting requests -> `Overloaded` (HTTP 503 + Retry-After).
- Priority levels (`batch_queue.RequestQueue`): the head is the oldest request of the
  highest priority (1); batch-mates are taken in priority order.
- Deadlines: a request submitted with `timeout_us` that is still queued when it passes
  leaves the queue and fails with `DeadlineExceeded` (504) at once, never run; one whose
  batch is still running gets the 504 at its deadline and its outputs are dropped.
  A request whose client is gone (`gone()`) or whose caller is cancelled leaves unrun.
  Each request dropped unrun is reported to `on_drop` with its reason (DROP_REASONS).
- Inputs must be validated before `submit`. If a batch still fails, or its outputs cannot
  be split by dim 0, each request is rerun alone, so one bad request fails only itself;
  unless `run` raised ModelNotReady (an isolated model's worker died or hung): then every
  request of the batch gets that error at once.
- Tiny models run on the event loop: for a model that runs in a few microseconds (a
  scikit-learn classifier) the thread handoff is most of the work, and with batching off
  it serialises every request behind a round trip (measured: 3.1k req/s off the loop, 5.1k
  inline). Every run is timed per batch key (`run_timing.RunTimer`); a batch runs inline
  once its key's recent runs, scaled to its rows, stay within `inline_max_us` (default
  100 µs), so the loop is never blocked longer than about that. A key never timed, or over
  the budget, runs on the worker threads, so a slow or blocking model never runs inline.
  `thread_cpu_timing` (ONNX Runtime on the CPU): runs are noted by the thread's CPU time,
  without the wait for the GIL after them or time the process was not scheduled
  (see run_timing).
- Time comes from `clock` (`clock.MonotonicClock` unless a test passes its own): queue
  delays, queue and compute times, and the run timings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shipyard.processing.padding import BatchPadding
from shipyard.serving.batch_join import joined_inputs, split_outputs, wanted_outputs
from shipyard.serving.batch_queue import BatchKey, BatchResult, Pending, RequestQueue
from shipyard.serving.clock import MONOTONIC, Clock
from shipyard.serving.errors import ClientGone, DeadlineExceeded, ModelNotReady, Overloaded
from shipyard.serving.run_timing import INLINE_MAX_US, RunTimer
from shipyard.serving.settings import BatchingSettings

log = logging.getLogger("shipyard.serving.batching")

RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]
"""Runs one (possibly batched) feed; an empty output list means every output."""
BatchHook = Callable[[int, int, int], None]
"""Called after each batch with (rows, requests, compute_ns)."""
DropHook = Callable[[str], None]
"""Called for each request dropped unrun, with its reason (one of DROP_REASONS)."""
Settled = Callable[[int, int], bool]
"""(requests queued, the queue delay in ns) -> True when no request can arrive to join a
waiting batch (`arrivals.Arrivals.settled`)."""

DROP_REASONS = ("queue_full", "timeout", "disconnected")
"""Why a request never ran: the queue was full, its deadline passed while it waited, or its
client went away (an HTTP connection closed, a gRPC call cancelled) while it waited."""


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
        on_drop: DropHook | None = None,
        priority_levels: int = 0,
        retry_after_s: int = 1,
        inline_max_us: int = INLINE_MAX_US,
        thread_cpu_timing: bool = False,
        settled: Settled | None = None,
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
        self._on_drop = on_drop
        self._settled = settled
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"shipyard-{name}"
        )
        self._slots = asyncio.Semaphore(workers)
        self._queue = RequestQueue(priority_levels, on_gone=self._gone)
        self.in_flight = 0
        """Requests taken into a batch on the workers and not yet answered."""
        self._waiter: asyncio.Future[None] | None = None
        self._watched: BatchKey | None = None
        """While the dispatcher waits for `_watched`'s batch to fill: a submit of another key
        does not wake it, one of this key only once the rows reach `max_batch_size`."""
        self._watched_rows = 0
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self.clock = clock
        self.timer = RunTimer(clock, inline_max_us=inline_max_us, thread_cpu=thread_cpu_timing)
        """Run times per batch key: what decides whether a batch runs inline."""

    @property
    def depth(self) -> int:
        """Requests queued and not yet dispatched."""
        return self._queue.live

    @property
    def priority_levels(self) -> int:
        return self._queue.levels

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] = (),
        *,
        priority: int = 1,
        timeout_us: int | None = None,
        elapsed_ns: int = 0,
        gone: Callable[[], bool] | None = None,
        pad: BatchPadding | None = None,
    ) -> BatchResult:
        """Queue one validated request and wait for its outputs.

        `priority`: 1 (highest) to `priority_levels`. `timeout_us`: the request's deadline,
        counted from its arrival `elapsed_ns` ago. `gone`: true once its client has left.
        `pad`: its token inputs may be padded to a batch-mate's length.
        """
        if self._closing:
            raise ModelNotReady(self.name, reason="it is being unloaded; retry")
        if not 1 <= priority <= self._queue.levels:
            raise ValueError(f"priority {priority} is outside 1..{self._queue.levels}")
        if self._queue.live >= self.max_queue_size:
            self._dropped("queue_full")
            raise Overloaded(self.name, queue_size=self._queue.live, retry_after=self.retry_after_s)
        remaining_ns = 0 if timeout_us is None else timeout_us * 1000 - elapsed_ns
        if timeout_us is not None and remaining_ns <= 0:
            self._dropped("timeout")
            raise DeadlineExceeded(self.name, timeout_us=timeout_us, ran=False)
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._dispatcher_done)
        item = Pending(
            inputs,
            list(outputs),
            loop.create_future(),
            self.clock.now_ns(),
            level=priority - 1,
            gone=gone,
            pad=pad,
        )
        self._queue.push(item)
        timer = None
        if timeout_us is not None:
            timer = self.clock.call_later(
                remaining_ns / 1e9, lambda: self._expire(item, timeout_us)
            )
        watched = self._watched
        if watched is None:
            self._wake()
        else:
            if item.key == watched:
                self._watched_rows += item.rows
                if self._watched_rows >= self.max_batch_size:
                    self._wake()  # the batch it waits for is full: no need to wait on
            settled = self._settled
            if settled is not None and settled(self._queue.live, self.max_delay_ns):
                self._wake()  # nothing more can arrive to join it
        try:
            return await item.future
        except asyncio.CancelledError:
            if self._queue.leave(item):
                self._dropped("disconnected")
                self._wake()  # it may be the request whose batch the dispatcher waits for
            raise
        finally:
            if timer is not None:
                timer.cancel()

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

    async def _sleep(
        self, timeout_ns: int | None, *, watch: BatchKey | None = None, rows: int = 0
    ) -> None:
        """Until the next submit/close, or `timeout_ns`, whichever comes first; with `watch`
        (the key of a batch holding `rows` rows), until that batch is full, a request leaves
        the queue early, the server closes, or `timeout_ns`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._watched, self._watched_rows = watch, rows
        handle = None
        if timeout_ns is not None:
            handle = self.clock.call_later(timeout_ns / 1e9, lambda: _resolve(waiter))
        try:
            await waiter
        finally:
            self._waiter = None
            self._watched = None
            if handle is not None:
                handle.cancel()

    async def _dispatch(self) -> None:
        while True:
            while not self._queue.live:
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
            self.in_flight += len(batch)
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _form_batch(self) -> list[Pending]:
        head = self._queue.head()
        if head is None:
            return []
        if self.enabled and head.key is not None and head.rows < self.max_batch_size:
            deadline = head.enqueued_ns + self.max_delay_ns
            while not self._closing and head.queued and not head.future.done():
                remaining = deadline - self.clock.now_ns()
                rows = self._queue.rows_like(head)
                if remaining <= 0 or rows >= self.max_batch_size:
                    break
                settled = self._settled
                if settled is not None and settled(self._queue.live, self.max_delay_ns):
                    break  # no request can arrive to join it: waiting only adds latency
                await self._sleep(remaining, watch=head.key, rows=rows)
        return self._queue.take(batching=self.enabled, max_rows=self.max_batch_size)

    async def _execute(self, batch: list[Pending]) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self.in_flight -= len(batch)
            self._slots.release()

    def _expire(self, item: Pending, timeout_us: int) -> None:
        """The request's deadline passed: it leaves the queue unrun, or is answered 504."""
        if item.future.done():
            return
        queued = self._queue.leave(item)
        if queued:
            self._dropped("timeout")
            self._wake()  # it may be the request whose batch the dispatcher waits for
        _fail(item, DeadlineExceeded(self.name, timeout_us=timeout_us, ran=not queued))

    def _gone(self, item: Pending) -> None:
        self._dropped("disconnected")
        _fail(item, ClientGone(self.name))

    def _dropped(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    def _inline(self, batch: list[Pending]) -> bool:
        """Whether this batch is cheap enough, by its key's recent timings, to run on the loop."""
        return self.timer.inline(batch[0].key, sum(i.rows for i in batch))

    def _timed(
        self, key: BatchKey | None, rows: int, feed: dict[str, np.ndarray], names: list[str]
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run the model (on whichever thread calls this) and note how long it took."""
        return self.timer.timed(key, rows, lambda: self._run(feed, names))

    def _run_inline(self, batch: list[Pending]) -> bool:
        """Run a cheap batch on the loop and answer it; False (nothing answered) if it fails."""
        dispatched = self.clock.now_ns()
        names = wanted_outputs(item.outputs for item in batch)
        rows = sum(i.rows for i in batch)
        try:
            results, compute_ns = self._timed(batch[0].key, rows, joined_inputs(batch), names)
        except Exception as exc:
            if len(batch) > 1:
                return False  # the workers rerun it with the usual one-by-one fallback
            _fail(batch[0], exc)
            return True
        parts = split_outputs(batch, results)
        if parts is None:
            return False  # the workers rerun it, find the same and turn batching off
        self._deliver(batch, parts, dispatched, compute_ns)
        return True

    async def _run_batch(self, batch: list[Pending]) -> None:
        dispatched = self.clock.now_ns()
        names = wanted_outputs(item.outputs for item in batch)
        try:
            feed = joined_inputs(batch)
            rows = sum(i.rows for i in batch)
            loop = asyncio.get_running_loop()
            results, compute_ns = await loop.run_in_executor(
                self._executor, self._timed, batch[0].key, rows, feed, names
            )
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, ModelNotReady):
                for item in batch:  # a model that cannot run now: no request is at fault
                    _fail(item, exc)
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
        parts = split_outputs(batch, results)
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
        batch: list[Pending],
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
        for item in self._queue.clear():
            _fail(item, ModelNotReady(self.name, reason=f"its batcher failed ({exc!r})"))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _fail(item: Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
