"""The batcher's queue policy on a manual clock: deadlines, priority levels, departed clients.

A request whose deadline passes while it waits leaves the queue at once and never runs;
one whose batch is running when it passes is answered 504 then; a higher priority runs
first; a client that is gone, or a cancelled caller, is dropped unrun. Each drop is
reported with its reason.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tests.serving.test_batcher import FakeModel, ManualClock, rows, until

from shipyard.serving.batching import Batcher
from shipyard.serving.errors import ClientGone, DeadlineExceeded, Overloaded
from shipyard.serving.settings import BatchingSettings

pytestmark = pytest.mark.anyio


def make(
    model: Any, clock: ManualClock, drops: list[str], *, levels: int = 0, **knobs: Any
) -> Batcher:
    return Batcher(
        model,
        name="fake",
        batching=BatchingSettings(**knobs),
        clock=clock,
        on_drop=drops.append,
        priority_levels=levels,
    )


async def blocked(batcher: Batcher, model: FakeModel) -> asyncio.Future[Any]:
    """A first request, running on the worker until the model's gate opens."""
    first = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: model.running == 1)
    return first


async def test_a_request_that_expires_in_the_queue_never_runs() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    model = FakeModel(gate=gate)
    batcher = make(model, clock, drops, max_batch_size=1)
    first = await blocked(batcher, model)
    late = asyncio.ensure_future(batcher.submit(rows(1, 5.0), timeout_us=10_000))
    kept = asyncio.ensure_future(batcher.submit(rows(1)))
    await until(lambda: batcher.depth == 2)
    clock.advance_to(9_999_999)
    await asyncio.sleep(0)
    assert not late.done()
    clock.advance_to(10_000_000)  # the deadline: answered now, while the first still runs
    with pytest.raises(DeadlineExceeded) as info:
        await late
    assert info.value.status == 504 and not info.value.ran
    assert "10000 µs" in info.value.message and "never ran" in info.value.message
    assert batcher.depth == 1 and model.running == 1
    gate.set()
    await asyncio.gather(first, kept)
    await batcher.close()
    assert model.batches == [1, 1]  # the expired request never reached the model
    assert drops == ["timeout"]


async def test_time_spent_before_submit_counts_and_a_spent_timeout_is_refused_at_once() -> None:
    clock, drops = ManualClock(), []
    model = FakeModel()
    batcher = make(model, clock, drops)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(1), timeout_us=1000, elapsed_ns=1_000_000)
    gate = threading.Event()
    model.gate = gate
    first = await blocked(batcher, model)
    pending = asyncio.ensure_future(batcher.submit(rows(1), timeout_us=1000, elapsed_ns=400_000))
    await until(lambda: clock.next_due() is not None)
    assert clock.next_due() == 600_000  # what was left of its 1 ms
    clock.advance_to(600_000)
    with pytest.raises(DeadlineExceeded):
        await pending
    gate.set()
    await first
    await batcher.close()
    assert model.batches == [1] and drops == ["timeout", "timeout"]


async def test_a_deadline_passing_while_the_batch_runs_answers_504_then() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    model = FakeModel(gate=gate)
    batcher = make(model, clock, drops)
    running = asyncio.ensure_future(batcher.submit(rows(1), timeout_us=5_000))
    await until(lambda: model.running == 1)
    clock.advance_to(5_000_000)
    with pytest.raises(DeadlineExceeded) as info:
        await running
    assert info.value.ran and "still running" in info.value.message
    gate.set()
    await until(lambda: batcher.in_flight == 0)
    await batcher.close()
    assert model.batches == [1] and drops == []  # it ran: not a queue drop


async def test_expired_requests_free_their_place_in_the_queue() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    model = FakeModel(gate=gate)
    batcher = make(model, clock, drops, max_queue_size=2, max_batch_size=1)
    first = await blocked(batcher, model)
    doomed = [asyncio.ensure_future(batcher.submit(rows(1), timeout_us=1000)) for _ in range(2)]
    await until(lambda: batcher.depth == 2)
    with pytest.raises(Overloaded):
        await batcher.submit(rows(1))
    clock.advance_to(1_000_000)
    await asyncio.gather(*doomed, return_exceptions=True)
    assert batcher.depth == 0
    admitted = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(2)]
    await until(lambda: batcher.depth == 2)
    gate.set()
    await asyncio.gather(first, *admitted)
    await batcher.close()
    assert drops == ["queue_full", "timeout", "timeout"]
    assert model.batches == [1, 1, 1]


async def test_a_higher_priority_request_queued_last_runs_first() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    order: list[float] = []
    model = FakeModel(gate=gate)

    def run(feed: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        order.append(float(feed["x"][0, 0]))
        return model(feed, outputs)

    batcher = make(run, clock, drops, levels=3, max_batch_size=1)
    first = asyncio.ensure_future(batcher.submit(rows(1, 0.0), priority=3))
    await until(lambda: model.running == 1)
    low = [asyncio.ensure_future(batcher.submit(rows(1, float(i)), priority=3)) for i in (1, 2)]
    mid = asyncio.ensure_future(batcher.submit(rows(1, 3.0), priority=2))
    high = asyncio.ensure_future(batcher.submit(rows(1, 4.0), priority=1))
    await until(lambda: batcher.depth == 4)
    gate.set()
    await asyncio.gather(first, *low, mid, high)
    with pytest.raises(ValueError):
        await batcher.submit(rows(1), priority=4)
    await batcher.close()
    assert order == [0.0, 4.0, 3.0, 1.0, 2.0]


async def test_batch_mates_are_taken_in_priority_order() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    model = FakeModel(gate=gate)
    batcher = make(model, clock, drops, levels=2, max_batch_size=3)
    first = await blocked(batcher, model)
    low = [asyncio.ensure_future(batcher.submit(rows(1, 1.0), priority=2)) for _ in range(3)]
    high = [asyncio.ensure_future(batcher.submit(rows(1, 2.0), priority=1)) for _ in range(2)]
    await until(lambda: batcher.depth == 5)
    gate.set()
    results = await asyncio.gather(first, *low, *high)
    await batcher.close()
    assert model.batches == [1, 3, 2]  # both high ones and the oldest low one, then the rest
    assert [r.batch_rows for r in results[1:]] == [3, 2, 2, 3, 3]


async def test_a_gone_client_and_a_cancelled_caller_are_dropped_unrun() -> None:
    clock, gate, drops = ManualClock(), threading.Event(), []
    model = FakeModel(gate=gate)
    batcher = make(model, clock, drops, max_batch_size=8)
    first = await blocked(batcher, model)
    left = False
    gone = asyncio.ensure_future(batcher.submit(rows(1), gone=lambda: left))
    cancelled = asyncio.ensure_future(batcher.submit(rows(1)))
    kept = asyncio.ensure_future(batcher.submit(rows(2)))
    await until(lambda: batcher.depth == 3)
    cancelled.cancel()
    await until(cancelled.done)
    assert batcher.depth == 2
    left = True
    gate.set()
    await asyncio.gather(first, kept)
    with pytest.raises(ClientGone):
        await gone
    await batcher.close()
    assert model.batches == [1, 2]
    assert sorted(drops) == ["disconnected", "disconnected"]
