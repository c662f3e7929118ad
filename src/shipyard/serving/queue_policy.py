"""A model's queue policy (`[queue]` in model.toml): default deadline and priority levels.

The shape of Triton's schedule-policy extension: a request may carry `timeout` (µs) and
`priority` parameters; `QueuePolicy.schedule` turns them, with the model's defaults, into
what the batcher takes, or refuses them with one 400 line. A request's deadline counts
from when the server received it (decoding included) to its answer: past it, a queued
request leaves the queue unrun and a running one is answered 504 (its outputs dropped).
The queue's size is `[batching] max_queue_size`.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.errors import UsageError

MAX_PRIORITY_LEVELS = 16


class Schedule(NamedTuple):
    """Where one request queues: its priority level (1 = highest) and deadline (None: none)."""

    priority: int = 1
    timeout_us: int | None = None


class QueuePolicy(BaseModel):
    """Deadlines and priorities of one model's queue; the defaults change nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    default_timeout_us: int = Field(default=0, ge=0)
    """Deadline of a request that sets no `timeout`, in µs from its arrival; 0 = none."""
    allow_timeout_override: bool = True
    """Whether a request's `timeout` parameter applies: it may shorten the default, never
    lengthen it (with no default it is the request's own). false: a request that sends a
    timeout is refused (400)."""
    priority_levels: int = Field(default=0, ge=0, le=MAX_PRIORITY_LEVELS)
    """Priority levels of the queue: requests of level 1 run before level 2, and so on.
    0: one level, and a request that sends a priority other than 0 is refused (400)."""
    default_priority: int | None = Field(default=None, ge=1, le=MAX_PRIORITY_LEVELS)
    """Level of a request that sets no priority (or 0); unset: the lowest level."""

    @model_validator(mode="after")
    def _default_within_levels(self) -> QueuePolicy:
        if self.default_priority is not None and self.default_priority > max(
            1, self.priority_levels
        ):
            raise ValueError(
                f"default_priority = {self.default_priority} is above priority_levels = "
                f"{self.priority_levels}"
            )
        return self

    def schedule(self, model: str, *, timeout_us: int | None, priority: int) -> Schedule:
        """A request's schedule from its `timeout` (None: not sent) and `priority` (0: not
        sent); UsageError (400) for what this model's policy does not allow."""
        levels = max(1, self.priority_levels)
        if priority == 0:
            level = self.default_priority or levels
        elif self.priority_levels == 0:
            raise UsageError(
                f"priority {priority}: model {model!r} has no priority levels; send no "
                "priority, or set [queue] priority_levels in its model.toml"
            )
        elif priority > levels:
            raise UsageError(
                f"priority {priority} is out of range: model {model!r} has levels 1 (highest) "
                f"to {levels}, and 0 means its default"
            )
        else:
            level = priority
        default = self.default_timeout_us or None
        if timeout_us is None:
            return Schedule(level, default)
        if not self.allow_timeout_override:
            raise UsageError(
                f"model {model!r} does not take a request timeout ([queue] "
                "allow_timeout_override = false); send none"
            )
        return Schedule(level, timeout_us if default is None else min(timeout_us, default))
