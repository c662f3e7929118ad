"""Per-version serving config, resolved once when a version loads, and the policy around it.

A model's `model.toml` overrides single knobs of the server's settings; `resolve` merges
them into a `VersionConfig` that the served version keeps (limits, decode limits, batching,
queue policy, drift, instances, warm-up, runtime options), so a request reads what it needs and merges
nothing. `ceiling_problem` is what a model.toml may not ask for (`max_instances`; with
`require_signature` nothing above the server's limits or queue size), `downgrade_refusal`
why a signed-only server does not roll a model back by itself. `check_output_size` applies
a version's `max_output_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from shipyard.codecs.limits import DecodeLimits
from shipyard.errors import ShipyardError
from shipyard.runtime.base import RuntimeOptions
from shipyard.serving.model_config import MODEL_CONFIG_FILE, ModelConfig, WorkerSettings
from shipyard.serving.queue_policy import QueuePolicy
from shipyard.serving.settings import (
    BatchingSettings,
    DriftSettings,
    LimitsSettings,
    RaySettings,
    ServerSettings,
    validation_details,
)

__all__ = [
    "OutputTooLarge",
    "VersionConfig",
    "ceiling_problem",
    "check_output_size",
    "decode_limits",
    "downgrade_refusal",
    "resolve",
]


@dataclass(frozen=True)
class VersionConfig:
    """What one served version runs with: its model.toml over the server's settings."""

    limits: LimitsSettings
    decode_limits: DecodeLimits
    """The codec-level part of `limits`, built once."""
    batching: BatchingSettings
    """`enabled` None: on when the model's signature and a trial run allow it."""
    queue: QueuePolicy
    """Deadlines and priority levels (model.toml [queue]; no server-wide defaults)."""
    drift: DriftSettings
    instances: int
    warmup: bool | Literal["strict"]
    runtime: RuntimeOptions
    worker: WorkerSettings | None = None
    """Its worker process (`isolation = "process"`); None: it runs in the server's process."""
    ray: RaySettings | None = None
    """Its Ray Serve deployment (`isolation` "ray", the default on a Ray deployment): the
    server's [ray] settings with the model.toml's [ray] over them."""


def resolve(config: ModelConfig, settings: ServerSettings) -> VersionConfig:
    """Merge a model's config over the server's settings (unset fields: the server's)."""
    limits_update = config.limits.model_dump(exclude_none=True)
    limits = settings.limits.model_copy(update=limits_update) if limits_update else settings.limits
    batching_update = config.batching.model_dump(exclude_none=True)
    drift_update = config.drift.model_dump(exclude_none=True)
    ray = ray_settings(config, settings)
    instances = config.instances or settings.instances
    if ray is not None and config.instances is None:
        # a thread per batch in flight: enough to keep every replica's queue filled
        instances = max(instances, min(2 * ray.most_replicas, settings.max_instances))
    return VersionConfig(
        limits=limits,
        decode_limits=decode_limits(limits),
        batching=settings.batching.model_copy(update=batching_update),
        queue=config.queue,
        drift=settings.drift.model_copy(update=drift_update) if drift_update else settings.drift,
        instances=instances,
        warmup=settings.warmup if config.warmup is None else config.warmup,
        runtime=config.runtime or settings.runtime,
        worker=config.worker if config.isolation == "process" else None,
        ray=ray,
    )


def isolation(config: ModelConfig, settings: ServerSettings) -> str:
    """Where a model's versions run: "none" (this process), "process" or "ray"."""
    if config.isolation is not None:
        return config.isolation
    return "ray" if settings.ray is not None else "none"


def ray_settings(config: ModelConfig, settings: ServerSettings) -> RaySettings | None:
    """The Ray deployment options of a model on Ray (model.toml [ray] over the server's);
    None when it does not run on Ray."""
    if isolation(config, settings) != "ray" or settings.ray is None:
        return None
    update = config.ray.model_dump(exclude_none=True)
    if not update:
        return settings.ray
    if "replicas" in update and "min_replicas" not in update:  # a fixed count: no autoscaling
        update |= {"min_replicas": None, "max_replicas": None}
    return RaySettings.model_validate({**settings.ray.model_dump(), **update})


def decode_limits(limits: LimitsSettings) -> DecodeLimits:
    """The codec-level limits of a (server or model) limits setting."""
    return DecodeLimits(
        max_json_depth=limits.max_json_depth,
        max_tensor_elements=limits.max_tensor_elements,
        max_request_elements=limits.max_request_elements,
        max_bytes_element=limits.max_bytes_element,
    )


def ceiling_problem(config: ModelConfig, settings: ServerSettings, model_dir: Path) -> str | None:
    """Why `config` (a model.toml) asks for more than the server allows; None when it fits.

    `max_instances` always bounds `instances`. With `require_signature`, model.toml is not
    covered by any signature, so it may only tighten the server's limits and queue size,
    never raise them: the server's values are then ceilings.
    """
    where = model_dir / MODEL_CONFIG_FILE
    if config.isolation == "ray" and settings.ray is None:
        return (
            f'{where}: isolation = "ray" needs a server on Ray (`shipyard deploy ray`); '
            "this one runs models in its own process"
        )
    if settings.ray is not None and isolation(config, settings) == "ray":
        try:
            ray_settings(config, settings)
        except ValidationError as exc:
            return f"{where}: invalid [ray] ({validation_details(exc)})"
    if config.instances is not None and config.instances > settings.max_instances:
        return (
            f"{where}: instances = {config.instances} is above the server's max_instances = "
            f"{settings.max_instances}"
        )
    if not settings.require_signature:
        return None
    ceilings = settings.limits.model_dump()
    for key, value in sorted(config.limits.model_dump(exclude_none=True).items()):
        if value > ceilings[key]:
            return (
                f"{where}: limits.{key} = {value} is above the server's {ceilings[key]} "
                "(with --require-signature a model.toml may only lower limits)"
            )
    queue = config.batching.max_queue_size
    if queue is not None and queue > settings.batching.max_queue_size:
        return (
            f"{where}: batching.max_queue_size = {queue} is above the server's "
            f"{settings.batching.max_queue_size} (with --require-signature a model.toml may "
            "only lower it)"
        )
    return None


def downgrade_refusal(
    settings: ServerSettings, wanted: set[int], high_water: int, *, force: bool
) -> str | None:
    """Why serving `wanted` would be a refused downgrade; None when it is allowed.

    With `require_signature` (and no `allow_downgrade`) a server does not by itself fall
    back below the highest version it has served for a model (after a model.toml policy
    change or a removed folder): an old signed version may have been withdrawn for a
    reason. An explicit load (`force`) is the operator's word and is always allowed.
    """
    guard = settings.require_signature and not settings.allow_downgrade
    if not guard or force or not wanted or max(wanted) >= high_water:
        return None
    return (
        f"refused downgrade: version {max(wanted)} is older than version "
        f"{high_water}, which this server has served; load the model explicitly "
        "(POST /v2/repository/models/NAME/load) or serve with --allow-downgrade"
    )


class OutputTooLarge(ShipyardError):
    """The model's outputs for this request are larger than the server sends."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, model: str, size: int, limit: int) -> None:
        super().__init__(
            f"model {model!r} produced {size}+ bytes of outputs, over the {limit}-byte limit "
            "(limits.max_output_bytes); send smaller batches or request fewer outputs"
        )
        self.size = size
        self.limit = limit


def check_output_size(outputs: Mapping[str, np.ndarray], *, limit: int, model: str) -> None:
    """OutputTooLarge when the outputs hold more than `limit` bytes (BYTES: their lengths)."""
    total = 0
    for array in outputs.values():
        if array.dtype == object:
            total += 4 * array.size  # the binary layout's length prefixes
            for item in array.flat:
                total += len(item) if isinstance(item, bytes | str) else 8
                if total > limit:
                    break
        else:
            total += array.nbytes
        if total > limit:
            raise OutputTooLarge(model, total, limit)
