"""The dynamic batcher driven directly with a fake model: formation, delay, limits, failures.

Time is a `ManualClock`: queue delays pass when a test moves the clock, and a fake model
"takes" the time it is told to, so nothing here sleeps or depends on this machine's speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InputError
from shipyard.serving.batch_queue import batch_key
from shipyard.serving.batching import Batcher
from shipyard.serving.errors import ModelNotReady, Overloaded
from shipyard.serving.settings import BatchingSettings

pytestmark = pytest.mark.anyio


class _ManualTimer:
    def __init__(self, at_ns: int, callback: Callable[[], None]) -> None:
        self.at_ns = at_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A `serving.clock.Clock` whose time moves only when told: `advance_to` fires timers."""

    def __init__(self) -> None:
        self.now = 0
        self._timers: list[_ManualTimer] = []
        self.armed = 0
        """Timers set so far (each wake of a waiting dispatcher sets one)."""

    def now_ns(self) -> int:
        return self.now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(self.now + round(delay_s * 1e9), callback)
        self._timers.append(timer)
        self.armed += 1
        return timer

    def next_due(self) -> int | None:
        """When the earliest pending timer fires (ns), or None when none is pending."""
        self._timers = [t for t in self._timers if not t.cancelled]
        return min((t.at_ns for t in self._timers), default=None)

    def pass_time(self, seconds: float) -> None:
        """Move time on without firing timers (what a model's run takes; any thread)."""
        self.now += round(seconds * 1e9)

    def advance_to(self, at_ns: int) -> None:
        """Move time to `at_ns` and fire, in order, every timer then due (on the loop)."""
        self.now = max(self.now, at_ns)
        due = sorted((t for t in self._timers if t.at_ns <= self.now), key=lambda t: t.at_ns)
        self._timers = [t for t in self._timers if t.at_ns > self.now]
        for timer in due:
            if not timer.cancelled:
                timer.callback()


async def until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Let the loop (and the batcher's worker threads) run until `condition()` holds."""
    deadline = time.monotonic() + timeout_s
    spins = 0
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        spins += 1
        # a few bare loop turns first; then give worker threads the CPU as well
        await asyncio.sleep(0 if spins < 100 else 0.001)


async def finish(clock: ManualClock, *calls: Awaitable[Any]) -> list[Any]:
    """Await `calls` together, moving the clock to each timer the batcher waits on."""
    tasks = [asyncio.ensure_future(call) for call in calls]

    def settled() -> bool:
        return all(t.done() for t in tasks) or clock.next_due() is not None

    while not all(t.done() for t in tasks):
        await until(settled)
        due = clock.next_due()
        if due is not None:
            clock.advance_to(due)
    return list(await asyncio.gather(*tasks, return_exceptions=True))


class FakeModel:
    """y = 2x, s = row sums; records every feed's row count and peak concurrency.

    Each run takes `cost_s` of the clock's time; `gate` holds runs until it is set and
    `barrier` until that many runs are in at once.
    """

    def __init__(
        self,
        clock: ManualClock | None = None,
        *,
        cost_s: float = 0.0,
        gate: threading.Event | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.gate = gate
        self.barrier = barrier
        self.batches: list[int] = []
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.batches.append(int(feed["x"].shape[0]))
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if self.barrier is not None:
                self.barrier.wait(10)
            if self.clock is not None:
                self.clock.pass_time(self.cost_s)
            x = feed["x"]
            if np.isnan(x).any():
                raise InputError("NaN in x")
            results = {"y": x * 2, "s": x.sum(axis=tuple(range(1, x.ndim)))}
            return {n: results[n] for n in (outputs or list(results))}
        finally:
            with self._lock:
                self.running -= 1


def make(model: Any, clock: ManualClock, *, workers: int = 1, **knobs: Any) -> Batcher:
    names = ("retry_after_s", "inline_max_us", "settled")
    options = {k: knobs.pop(k) for k in names if k in knobs}
    return Batcher(
        model,
        name="fake",
        batching=BatchingSettings(**knobs),
        workers=workers,
        clock=clock,
        **options,
    )


def rows(n: int, value: float = 1.0, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def test_concurrent_requests_form_one_batch_and_split_back() -> None:
    clock = ManualClock()
    model = FakeModel(clock, cost_s=0.002)
    batcher = make(model, clock, max_batch_size=16, max_queue_delay_us=100_000)
    results = await finish(clock, *(batcher.submit(rows(1, float(i))) for i in range(8)))
    await batcher.close()
    assert model.batches == [8]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 2.0 * i))
        assert result.batch_rows == 8
        assert (result.queue_ns, result.compute_ns) == (100_000_000, 2_000_000)


async def test_max_batch_size_caps_rows_and_large_requests_run_alone() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=4, max_queue_delay_us=50_000)
    sizes = [1, 2, 1, 3, 1, 6, 1]
    results = await finish(clock, *(batcher.submit(rows(n)) for n in sizes))
    await batcher.close()
    assert [r.outputs["y"].shape[0] for r in results] == sizes
    assert model.batches == [4, 4, 6, 1]  # 1+2+1, 3+1, 6 alone (over the limit), the last 1


async def test_requests_wait_exactly_the_queue_delay() -> None:
    clock = ManualClock()
    batcher = make(FakeModel(), clock, max_batch_size=64, max_queue_delay_us=80_000)
    pending = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: clock.next_due() is not None)
    assert clock.next_due() == 80_000_000
    clock.advance_to(79_999_999)
    await asyncio.sleep(0)
    assert not pending.done()
    clock.advance_to(80_000_000)
    result = await pending
    await batcher.close()
    assert result.queue_ns == 80_000_000


async def test_a_batch_runs_once_full_before_its_delay_and_a_cancelled_head_frees_it() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=4, max_queue_delay_us=100_000)
    head = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: clock.next_due() is not None)  # waiting for its batch to fill
    armed = clock.armed
    other = asyncio.ensure_future(batcher.submit(rows(2, width=5)))  # another batch key
    await asyncio.sleep(0.01)
    assert not head.done() and model.batches == []
    assert clock.armed == armed  # the dispatcher slept on: that request cannot fill it
    filler = asyncio.ensure_future(batcher.submit(rows(3)))  # 1 + 3 rows: full
    done = await asyncio.wait_for(asyncio.gather(head, filler), 5)  # no time passed
    assert model.batches == [4] and [r.queue_ns for r in done] == [0, 0]
    # the other key's request is now the head; cancelling it lets the next one batch at once
    late = asyncio.ensure_future(batcher.submit(rows(1, width=5)))
    await asyncio.sleep(0.01)
    assert not late.done()
    other.cancel()
    await until(lambda: model.batches == [4, 1])
    assert (await late).queue_ns < 100_000_000
    await batcher.close()


async def test_a_batch_runs_at_once_when_nothing_more_can_join_it() -> None:
    clock = ManualClock()
    model = FakeModel()
    asked: list[tuple[int, int]] = []
    complete = 3

    def settled(queued: int, quiet_ns: int) -> bool:
        asked.append((queued, quiet_ns))
        return queued == complete

    batcher = make(model, clock, max_batch_size=16, max_queue_delay_us=100_000, settled=settled)
    first = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(2)]
    await until(lambda: clock.next_due() is not None)  # two of three: it waits its delay
    await asyncio.sleep(0.01)
    assert model.batches == [] and not any(f.done() for f in first)
    third = asyncio.ensure_future(batcher.submit(rows(1)))
    done = await asyncio.wait_for(asyncio.gather(*first, third), 5)  # no clock time passed
    assert model.batches == [3] and [r.queue_ns for r in done] == [0, 0, 0]
    assert (3, 100_000_000) in asked  # asked with the queue delay as the quiet window
    # while the oracle says more may come, the delay holds as before
    complete = 0
    late = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: clock.next_due() is not None)
    await asyncio.sleep(0.01)
    assert not late.done()
    clock.advance_to(clock.next_due() or 0)
    assert (await late).queue_ns == 100_000_000
    await batcher.close()


async def test_zero_delay_adds_no_wait_but_batches_under_load() -> None:
    clock = ManualClock()
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make(model, clock, max_batch_size=64, max_queue_delay_us=0)
    first = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: model.running == 1)  # the first runs alone; the rest queue behind it
    rest = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(5)]
    await until(lambda: batcher.depth == 5)
    gate.set()
    done = await asyncio.gather(first, *rest)
    await batcher.close()
    assert model.batches == [1, 5]
    assert all(r.batch_rows == 5 for r in done[1:])
    assert clock.now == 0 and clock.next_due() is None  # nothing ever waited on the clock


async def test_only_requests_with_matching_trailing_dims_share_a_batch() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=16, max_queue_delay_us=50_000)
    narrow = [batcher.submit(rows(1, width=3)) for _ in range(3)]
    wide = [batcher.submit(rows(1, width=5)) for _ in range(2)]
    results = await finish(clock, *narrow, *wide)
    await batcher.close()
    assert model.batches == [3, 2]
    assert [r.outputs["y"].shape[1] for r in results] == [3, 3, 3, 5, 5]


async def test_full_queue_is_overloaded_with_retry_after() -> None:
    clock = ManualClock()
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make(model, clock, max_queue_size=3, retry_after_s=7)
    running = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: model.running == 1)  # dispatched: the worker blocks on the gate
    queued = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(3)]
    await until(lambda: batcher.depth == 3)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(rows(1))
    assert info.value.status == 503 and info.value.retry_after == 7
    gate.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=16, max_queue_delay_us=50_000)
    outcomes = await finish(
        clock,
        batcher.submit(rows(1, 1.0)),
        batcher.submit(rows(1, float("nan"))),
        batcher.submit(rows(2, 3.0)),
    )
    await batcher.close()
    assert isinstance(outcomes[1], InputError)
    np.testing.assert_array_equal(outcomes[0].outputs["y"], np.full((1, 3), 2.0))
    np.testing.assert_array_equal(outcomes[2].outputs["y"], np.full((2, 3), 6.0))
    assert model.batches == [4, 1, 1, 2]  # tried together first, then one by one


async def test_outputs_that_do_not_follow_the_batch_turn_batching_off() -> None:
    def total(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return {"t": np.array(feed["x"].sum(), dtype=np.float32)}  # a scalar: cannot split

    clock = ManualClock()
    batcher = make(total, clock, max_queue_delay_us=50_000)
    results = await finish(clock, *(batcher.submit(rows(1, float(i))) for i in range(3)))
    await batcher.close()
    assert [float(r.outputs["t"]) for r in results] == [0.0, 3.0, 6.0]
    assert batcher.enabled is False


async def test_each_request_gets_only_the_outputs_it_asked_for() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=8, max_queue_delay_us=50_000)
    only_s, every = await finish(clock, batcher.submit(rows(1), ["s"]), batcher.submit(rows(1)))
    await batcher.close()
    assert list(only_s.outputs) == ["s"]
    assert list(every.outputs) == ["y", "s"]
    assert model.batches == [2]


async def test_workers_run_batches_concurrently() -> None:
    clock = ManualClock()
    model = FakeModel(barrier=threading.Barrier(3))  # no run finishes before all three start
    batcher = make(model, clock, workers=3, enabled=False)
    await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(3)))
    await batcher.close()
    assert model.peak == 3
    assert model.batches == [1, 1, 1]


async def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    clock = ManualClock()
    model = FakeModel()
    batcher = make(model, clock, max_batch_size=2)
    pending = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(5)]
    await asyncio.sleep(0)  # one loop turn: all five are queued
    assert batcher.depth == 5
    await batcher.close()
    assert all(p.done() and p.exception() is None for p in pending)
    with pytest.raises(ModelNotReady):
        await batcher.submit(rows(1))


async def test_cancelled_requests_are_skipped() -> None:
    clock = ManualClock()
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make(model, clock, max_batch_size=8)
    first = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: model.running == 1)
    doomed = asyncio.ensure_future(batcher.submit(rows(1)))
    kept = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: batcher.depth == 2)
    doomed.cancel()
    await until(doomed.done)
    gate.set()
    await asyncio.gather(first, kept)
    await batcher.close()
    assert model.batches == [1, 1]


def test_batch_key_groups_by_trailing_dims_and_dtype() -> None:
    a = {"x": np.zeros((2, 3), np.float32)}
    b = {"x": np.zeros((5, 3), np.float32)}
    assert batch_key(a)[0] == batch_key(b)[0] and batch_key(b)[1] == 5
    assert batch_key({"x": np.zeros((2, 4), np.float32)})[0] != batch_key(a)[0]
    assert batch_key({"x": np.zeros((2, 3), np.float64)})[0] != batch_key(a)[0]
    assert batch_key({"x": np.zeros((2, 3)), "y": np.zeros((3, 3))}) == (None, 0)
    assert batch_key({"x": np.zeros(())}) == (None, 0)


async def test_a_tiny_model_runs_inline_once_timed_and_a_slow_one_never_does() -> None:
    threads: list[int] = []
    clock = ManualClock()
    fast = FakeModel(clock, cost_s=0.000_001)

    def run(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return fast(feed, outputs)

    batcher = make(run, clock, enabled=False)
    for _ in range(12):
        await batcher.submit(rows(1))
    await batcher.close()
    loop_thread = threading.get_ident()
    assert loop_thread not in threads[:3]  # timed on the workers first
    assert threads[3:] == [loop_thread] * 9  # then inline: 1 µs is within the 100 µs budget

    slow = FakeModel(clock, cost_s=0.002)
    batcher = make(slow, clock, enabled=False)
    for _ in range(5):
        await batcher.submit(rows(1))
    await batcher.close()
    timings = batcher.timer.timings
    assert [t.estimate_ns(1) for t in timings.values()] == [2_000_000]  # over the budget: never
    assert timings and all(t.runs == 5 for t in timings.values())


async def test_a_failing_inline_batch_still_fails_only_the_bad_request() -> None:
    clock = ManualClock()
    model = FakeModel(clock, cost_s=0.000_001)
    batcher = make(model, clock, max_batch_size=16, max_queue_delay_us=20_000)
    for _ in range(10):
        await finish(clock, batcher.submit(rows(1)))  # timed: the next batches run inline
    outcomes = await finish(
        clock,
        batcher.submit(rows(1, 1.0)),
        batcher.submit(rows(1, float("nan"))),
        batcher.submit(rows(1, 3.0)),
    )
    await batcher.close()
    assert isinstance(outcomes[1], InputError)
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    np.testing.assert_array_equal(outcomes[2].outputs["y"], np.full((1, 3), 6.0))
    assert model.batches[-4:] == [3, 1, 1, 1]  # inline together, then one by one on workers
