"""Run one request on one served version, and mirror a request to a rollout's other version.

`run_on` is the whole per-version path of an inference: the version's queue policy turns the
request's `timeout`/`priority` into a schedule, its processing (if declared) turns text and
images into tensors, the inputs are checked, the batcher runs them and the outputs are
post-processed and checked against the output limit. The data plane calls it for the
version a request is routed to; `Mirrors` calls it again for a rollout's mirrored copy
(shadow: the candidate; canary with an agreement gate: stable) in the background, after the
client has its answer, and compares the two versions' outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from shipyard.codecs.types import InferenceRequest
from shipyard.processing.padding import BatchPadding
from shipyard.serving.agreement import compare
from shipyard.serving.batch_queue import BatchResult
from shipyard.serving.calls import outcome_of_error
from shipyard.serving.request_checks import prepare_inputs, validated
from shipyard.serving.traffic import Plan
from shipyard.serving.version_config import check_output_size
from shipyard.serving.version_state import ServedVersion

log = logging.getLogger("shipyard.serving.rollout")

MIRROR_PROTOCOL = "mirror"
"""The `protocol` label of mirrored calls in the request metrics."""


class Ran(NamedTuple):
    """What one version answered: the outputs asked for, the tensors fed, the batch timing."""

    outputs: dict[str, np.ndarray]
    inputs: dict[str, Any]
    result: BatchResult


async def run_on(
    served: ServedVersion,
    request: InferenceRequest,
    *,
    started: int,
    usage: dict[str, int] | None = None,
    gone: Callable[[], bool] | None = None,
) -> Ran:
    """Validate, (process,) batch and run `request` on `served`; raise its ShipyardError."""
    name = served.name
    schedule = served.resolved.queue.schedule(
        name, timeout_us=request.timeout_us, priority=request.priority
    )
    processor = served.model.processor
    pad: BatchPadding | None = None
    if processor is None:
        wanted = request.output_names
        inputs = validated(served, request.inputs, wanted)
    else:
        prepared = await prepare_inputs(processor, request.inputs)
        if usage is not None:
            usage["prompt_tokens"] = prepared.tokens
        wanted = processor.graph_outputs(request.output_names)
        inputs = validated(served, prepared.inputs, wanted, request.output_names)
        # Tokenized here: the batcher may pad it to a longer batch-mate's length.
        pad = processor.batch_padding if prepared.processed else None
    result = await served.batcher.submit(
        inputs,
        wanted,
        priority=schedule.priority,
        timeout_us=schedule.timeout_us,
        elapsed_ns=time.perf_counter_ns() - started,
        gone=gone,
        pad=pad,
    )
    if processor is None:
        outputs = result.outputs
    else:
        outputs = processor.postprocess(result.outputs, request.output_names)
    check_output_size(outputs, limit=served.limits.max_output_bytes, model=name)
    return Ran(outputs, inputs, result)


Observe = Callable[[ServedVersion, str, int], None]
"""Reports a mirrored call to the request metrics: (version, outcome, total_ns)."""


class Mirrors:
    """Mirrored calls in flight (bounded per rollout by `claim_mirror`)."""

    def __init__(self, *, compared: Callable[[Plan, Any], None], observe: Observe) -> None:
        self._compared = compared
        self._observe = observe
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        plan: Plan,
        mirror: ServedVersion,
        request: InferenceRequest,
        answered: dict[str, np.ndarray],
    ) -> None:
        """Send `request` (answered by `plan.served` with `answered`) to `mirror` too."""
        task = asyncio.get_running_loop().create_task(
            self._run(plan, mirror, request, answered), name=f"mirror-{mirror.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self,
        plan: Plan,
        mirror: ServedVersion,
        request: InferenceRequest,
        answered: dict[str, np.ndarray],
    ) -> None:
        rollout = plan.rollout
        assert rollout is not None and plan.role is not None
        started = time.perf_counter_ns()
        outcome, outputs = "success", None
        try:
            with mirror.leased():
                outputs = (await run_on(mirror, request, started=started)).outputs
        except Exception as exc:
            outcome = outcome_of_error(exc)
        finally:
            rollout.release_mirror()
        total_ns = time.perf_counter_ns() - started
        self._observe(mirror, outcome, total_ns)
        try:
            if plan.role == "stable":  # shadow: the mirror is the candidate, on trial
                decision = rollout.observe("candidate", outcome, total_ns / 1e6)
                self._compared(plan, decision)
                if outputs is None:
                    return
                stable, candidate = answered, outputs
            elif outputs is None:  # canary: stable's copy failed, nothing to compare with
                rollout.observe_mirror_failure()
                return
            else:
                stable, candidate = outputs, answered
            config = rollout.config
            comparison = compare(
                stable, candidate, wanted=config.compare, rtol=config.rtol, atol=config.atol
            )
            self._compared(plan, rollout.observe_comparison(comparison))
        except Exception:  # a mirror must never hurt serving
            log.exception("comparing %s versions failed", mirror.name)
