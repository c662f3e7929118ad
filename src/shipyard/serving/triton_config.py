"""Triton's model configuration document (`GET /v2/models/NAME/config`) of a served version."""

from __future__ import annotations

from typing import Any

from shipyard.package.dtypes import BY_NAME
from shipyard.package.tensorspec import TensorSpec
from shipyard.serving.model_config import VersionPolicy
from shipyard.serving.version_state import ServedVersion

CONFIG_PLATFORM = "onnxruntime_onnx"
"""Triton's platform name for ONNX Runtime models, as its model configuration spells it."""
CONFIG_BACKEND = "onnxruntime"
_GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
    }
)


def triton_config(name: str, served: ServedVersion) -> dict[str, Any]:
    """Triton's model configuration of a served version, in its JSON layout.

    Only what holds for this server: when it batches the version along dim 0 (its
    batcher is on now), `max_batch_size` is the batcher's limit, `dims` leave out the
    batch dim and `dynamic_batching` is present; otherwise `max_batch_size` is 0 and
    `dims` are the full shapes (-1: dynamic). A tensor that is nothing but the batch
    dim gets `dims: []` (Triton would write [1] with a reshape, which tells clients to
    send [B, 1]; Shipyard takes [B]).
    """
    batcher, model = served.batcher, served.model
    batched = batcher.enabled and all(s.batched for s in (*model.inputs, *model.outputs))
    kind = "KIND_GPU" if _GPU_PROVIDERS & set(model.runtime.providers) else "KIND_CPU"
    config: dict[str, Any] = {
        "name": name,
        "platform": CONFIG_PLATFORM,
        "backend": CONFIG_BACKEND,
        "version_policy": _version_policy(served.config.version_policy),
        "max_batch_size": batcher.max_batch_size if batched else 0,
        "input": [{**_config_tensor(s, batched), "format": "FORMAT_NONE"} for s in model.inputs],
        "output": [_config_tensor(s, batched) for s in model.outputs],
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": batcher.max_delay_ns // 1000,
            "default_queue_policy": {"max_queue_size": batcher.max_queue_size},
        }
    config["instance_group"] = [{"name": name, "kind": kind, "count": batcher.workers}]
    return config


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = spec.shape[1:] if batched else spec.shape
    return {"name": spec.name, "data_type": BY_NAME[spec.dtype].triton, "dims": list(dims)}


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific)}}
    return {"latest": {"num_versions": policy.latest or 1}}
