"""The dynamic batcher driven directly with a fake model: formation, delay, limits, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from shipyard.errors import InputError
from shipyard.serving.batching import Batcher, batch_key
from shipyard.serving.errors import ModelNotReady, Overloaded
from shipyard.serving.settings import BatchingSettings

pytestmark = pytest.mark.anyio


class FakeModel:
    """y = 2x, s = row sums; records every feed's row count and peak concurrency."""

    def __init__(self, *, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
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
            time.sleep(self.delay_s)
            x = feed["x"]
            if np.isnan(x).any():
                raise InputError("NaN in x")
            results = {"y": x * 2, "s": x.sum(axis=tuple(range(1, x.ndim)))}
            return {n: results[n] for n in (outputs or list(results))}
        finally:
            with self._lock:
                self.running -= 1


def make(model: FakeModel, *, workers: int = 1, **knobs: object) -> Batcher:
    return Batcher(model, name="fake", batching=BatchingSettings(**knobs), workers=workers)  # type: ignore[arg-type]


def rows(n: int, value: float = 1.0, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def test_concurrent_requests_form_one_batch_and_split_back() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=16, max_queue_delay_us=100_000)
    results = await asyncio.gather(*(batcher.submit(rows(1, float(i))) for i in range(8)))
    await batcher.close()
    assert model.batches == [8]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 2.0 * i))
        assert result.batch_rows == 8
        assert result.queue_ns >= 0 and result.compute_ns > 0


async def test_max_batch_size_caps_rows_and_large_requests_run_alone() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=4, max_queue_delay_us=50_000)
    sizes = [1, 2, 1, 3, 1, 6, 1]
    results = await asyncio.gather(*(batcher.submit(rows(n)) for n in sizes))
    await batcher.close()
    assert [r.outputs["y"].shape[0] for r in results] == sizes
    assert sum(model.batches) == sum(sizes)
    assert 6 in model.batches  # larger than the limit: alone
    assert all(b <= 4 for b in model.batches if b != 6)


async def test_requests_wait_at_most_the_queue_delay() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=64, max_queue_delay_us=80_000)
    started = time.perf_counter()
    result = await batcher.submit(rows(1))
    waited = time.perf_counter() - started
    await batcher.close()
    assert 0.07 <= waited < 1.0
    assert result.queue_ns >= 70_000_000


async def test_zero_delay_adds_no_wait_but_batches_under_load() -> None:
    model = FakeModel(delay_s=0.2)
    batcher = make(model, max_batch_size=64, max_queue_delay_us=0)
    started = time.perf_counter()
    first = asyncio.ensure_future(batcher.submit(rows(1)))
    await asyncio.sleep(0.01)  # the first runs alone; the rest queue behind it
    rest = await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(5)))
    await first
    await batcher.close()
    assert model.batches == [1, 5]
    assert all(r.batch_rows == 5 for r in rest)
    assert time.perf_counter() - started < 2.0


async def test_only_requests_with_matching_trailing_dims_share_a_batch() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=16, max_queue_delay_us=50_000)
    narrow = [batcher.submit(rows(1, width=3)) for _ in range(3)]
    wide = [batcher.submit(rows(1, width=5)) for _ in range(2)]
    results = await asyncio.gather(*narrow, *wide)
    await batcher.close()
    assert sorted(model.batches) == [2, 3]
    assert [r.outputs["y"].shape[1] for r in results] == [3, 3, 3, 5, 5]


async def test_full_queue_is_overloaded_with_retry_after() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = Batcher(
        model, name="fake", batching=BatchingSettings(max_queue_size=3), retry_after_s=7
    )
    running = asyncio.ensure_future(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)  # dispatched: the worker blocks on the gate
    queued = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(rows(1))
    assert info.value.status == 503 and info.value.retry_after == 7
    gate.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=16, max_queue_delay_us=50_000)
    outcomes = await asyncio.gather(
        batcher.submit(rows(1, 1.0)),
        batcher.submit(rows(1, float("nan"))),
        batcher.submit(rows(2, 3.0)),
        return_exceptions=True,
    )
    await batcher.close()
    assert isinstance(outcomes[1], InputError)
    np.testing.assert_array_equal(outcomes[0].outputs["y"], np.full((1, 3), 2.0))  # type: ignore[union-attr]
    np.testing.assert_array_equal(outcomes[2].outputs["y"], np.full((2, 3), 6.0))  # type: ignore[union-attr]
    assert model.batches[0] == 4  # tried together first, then one by one


async def test_outputs_that_do_not_follow_the_batch_turn_batching_off() -> None:
    def total(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return {"t": np.array(feed["x"].sum(), dtype=np.float32)}  # a scalar: cannot split

    batcher = Batcher(total, name="total", batching=BatchingSettings(max_queue_delay_us=50_000))
    results = await asyncio.gather(*(batcher.submit(rows(1, float(i))) for i in range(3)))
    await batcher.close()
    assert [float(r.outputs["t"]) for r in results] == [0.0, 3.0, 6.0]
    assert batcher.enabled is False


async def test_each_request_gets_only_the_outputs_it_asked_for() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=8, max_queue_delay_us=50_000)
    only_s, every = await asyncio.gather(batcher.submit(rows(1), ["s"]), batcher.submit(rows(1)))
    await batcher.close()
    assert list(only_s.outputs) == ["s"]
    assert list(every.outputs) == ["y", "s"]
    assert model.batches == [2]


async def test_workers_run_batches_concurrently() -> None:
    model = FakeModel(delay_s=0.1)
    batcher = make(model, workers=3, enabled=False)
    await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(3)))
    await batcher.close()
    assert model.peak == 3
    assert model.batches == [1, 1, 1]


async def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    model = FakeModel(delay_s=0.02)
    batcher = make(model, max_batch_size=2)
    pending = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(5)]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(p.done() and p.exception() is None for p in pending)
    with pytest.raises(ModelNotReady):
        await batcher.submit(rows(1))


async def test_cancelled_requests_are_skipped() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make(model, max_batch_size=8)
    first = asyncio.ensure_future(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(batcher.submit(rows(1)))
    kept = asyncio.ensure_future(batcher.submit(rows(1)))
    await asyncio.sleep(0.01)
    doomed.cancel()
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
    fast = FakeModel()

    def run(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return fast(feed, outputs)

    # A generous budget: this is about where runs happen, not about this machine's speed.
    batcher = Batcher(
        run, name="fast", batching=BatchingSettings(enabled=False), inline_max_us=50_000
    )
    for _ in range(12):
        await batcher.submit(rows(1))
    await batcher.close()
    loop_thread = threading.get_ident()
    assert loop_thread not in threads[:3]  # timed on the workers first
    assert threads[-3:] == [loop_thread] * 3  # then inline

    slow = FakeModel(delay_s=0.002)
    batcher = Batcher(slow, name="slow", batching=BatchingSettings(enabled=False))
    for _ in range(5):
        await batcher.submit(rows(1))
    await batcher.close()
    assert batcher._timings  # timed, but over the inline budget every time
    assert all(t.ns_per_row > 100_000 for t in batcher._timings.values())


async def test_a_failing_inline_batch_still_fails_only_the_bad_request() -> None:
    model = FakeModel()
    batcher = Batcher(
        model,  # type: ignore[arg-type]
        name="fake",
        batching=BatchingSettings(max_batch_size=16, max_queue_delay_us=20_000),
        inline_max_us=50_000,
    )
    for _ in range(10):
        await batcher.submit(rows(1))  # timed: the next batches run inline
    outcomes = await asyncio.gather(
        batcher.submit(rows(1, 1.0)),
        batcher.submit(rows(1, float("nan"))),
        batcher.submit(rows(1, 3.0)),
        return_exceptions=True,
    )
    await batcher.close()
    assert isinstance(outcomes[1], InputError)
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    np.testing.assert_array_equal(outcomes[2].outputs["y"], np.full((1, 3), 6.0))
