"""Sub-millisecond timers (`serving.fine_timers`) on uvloop and asyncio, and the batcher's
queue delay waited in one sleep instead of a re-check on every turn of the loop.

The timing properties asserted are lower bounds (a timer never fires before its delay)
and counts, which a busy machine cannot break; upper bounds are loose (a broken arm would
never fire at all).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from shipyard.serving import fine_timers
from shipyard.serving.batching import Batcher
from shipyard.serving.clock import MONOTONIC
from shipyard.serving.settings import BatchingSettings

uvloop = pytest.importorskip("uvloop", reason="uvloop is a dependency of the server")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="timerfd is Linux's")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run_on(kind: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
        return runner.run(main())


def _now_into(future: asyncio.Future[int]) -> None:
    future.set_result(time.monotonic_ns())


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_short_timers_never_fire_early_and_fire_in_deadline_order(kind: str) -> None:
    async def main() -> tuple[list[float], list[str]]:
        loop = asyncio.get_running_loop()
        assert fine_timers.for_loop(loop) is not None
        early = []
        # uvloop runs 0.2 ms as call_soon and 0.7 / 1.4 ms as 1 ms: each of these early
        for delay in (0.0002, 0.0007, 0.0014, 0.004):
            for _ in range(5):
                fired: asyncio.Future[int] = loop.create_future()
                start = time.monotonic_ns()
                MONOTONIC.call_later(delay, functools.partial(_now_into, fired))
                waited = (await asyncio.wait_for(fired, 5)) - start
                early.append(delay * 1e9 - waited)
        order: list[str] = []
        done = loop.create_future()
        for name, delay in (("c", 0.0009), ("a", 0.0003), ("b", 0.0006)):
            MONOTONIC.call_later(delay, functools.partial(order.append, name))
        MONOTONIC.call_later(0.0012, lambda: done.set_result(None))
        await asyncio.wait_for(done, 5)
        return early, order

    early, order = run_on(kind, main)
    assert max(early) <= 0, f"a timer fired {max(early) / 1e3:.0f} µs early"
    assert order == ["a", "b", "c"]


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_a_cancelled_timer_never_runs_and_the_next_still_does(kind: str) -> None:
    async def main() -> list[str]:
        ran: list[str] = []
        done = asyncio.get_running_loop().create_future()
        first = MONOTONIC.call_later(0.0004, lambda: ran.append("cancelled"))
        MONOTONIC.call_later(0.0008, lambda: ran.append("kept"))
        MONOTONIC.call_later(0.002, lambda: done.set_result(None))
        first.cancel()  # the head: the fd is re-armed at the next
        first.cancel()  # twice is harmless
        await asyncio.wait_for(done, 5)
        last = MONOTONIC.call_later(0.0005, lambda: ran.append("never"))
        last.cancel()  # the only one: the fd is disarmed
        await asyncio.sleep(0.003)
        return ran

    assert run_on(kind, main) == ["kept"]


def test_a_failing_callback_is_reported_and_the_timers_after_it_still_run() -> None:
    async def main() -> tuple[list[str], list[BaseException]]:
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        ran: list[str] = []
        done = loop.create_future()

        def fail() -> None:
            raise RuntimeError("boom")

        MONOTONIC.call_later(0.0003, fail)
        MONOTONIC.call_later(0.0003, lambda: ran.append("after"))
        MONOTONIC.call_later(0.001, lambda: done.set_result(None))
        await asyncio.wait_for(done, 5)
        return ran, reported

    ran, reported = run_on("uvloop", main)
    assert ran == ["after"]
    assert [str(e) for e in reported] == ["boom"]


def test_long_delays_stay_on_the_loops_own_timers() -> None:
    async def main() -> object:
        return MONOTONIC.call_later(0.5, lambda: None)

    timer = run_on("uvloop", main)
    assert not isinstance(timer, fine_timers.FineTimer)


def test_a_queue_delay_is_one_sleep_not_a_recheck_on_every_turn_of_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop runs a 500 µs timer as call_soon: the dispatcher waiting out the delay used to
    wake on every turn of the loop (dozens of times on an idle loop)."""
    sleeps: list[int | None] = []
    original = Batcher._sleep

    async def counted(self: Batcher, timeout_ns: int | None, **kwargs: Any) -> None:
        sleeps.append(timeout_ns)
        await original(self, timeout_ns, **kwargs)

    monkeypatch.setattr(Batcher, "_sleep", counted)

    def model(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return {"y": feed["x"] * 2}

    async def main() -> tuple[int, float]:
        settings = BatchingSettings(enabled=True, max_batch_size=8, max_queue_delay_us=500)
        batcher = Batcher(model, name="m", batching=settings)
        try:
            x = np.ones((1, 2), np.float32)
            for _ in range(3):  # times the runs: later batches run on the loop
                await batcher.submit({"x": x})
            sleeps.clear()
            result = await batcher.submit({"x": x})
            return result.queue_ns, float(result.outputs["y"][0, 0])
        finally:
            await batcher.close()

    queue_ns, y = run_on("uvloop", main)
    assert y == 2.0
    assert queue_ns >= 500_000  # the whole delay (nothing else came to join it)
    timed = [t for t in sleeps if t is not None]
    assert len(timed) == 1, f"the delay was waited in {len(timed)} sleeps"
