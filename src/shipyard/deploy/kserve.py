"""`shipyard deploy kserve`: one ServingRuntime and an InferenceService per model.

KServe's storage initializer downloads each InferenceService's `storageUri` into
/mnt/models; Shipyard serves a repository, so each URI must hold a repository with that one
model (`NAME/VERSION/...`), as KServe's Triton runtime expects. Standard (RawDeployment)
mode: a plain Deployment, no Knative, so the drain and probes are the same as `deploy k8s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shipyard.deploy.common import (
    GRPC_PORT,
    HTTP_PORT,
    MODEL_DIR,
    DeployUsageError,
    RepositoryPlan,
    check_name,
    number,
    object_name,
)
from shipyard.deploy.k8s import GRACE_MARGIN_S, container_security, probes, prometheus_annotations

FORMAT = "onnx"
DEFAULT_STORAGE_PREFIX = "s3://CHANGE-ME/shipyard"


@dataclass(frozen=True)
class KServeOptions:
    """What `shipyard deploy kserve` is told."""

    image: str
    runtime: str = "shipyard"
    namespace: str | None = None
    storage_prefix: str = DEFAULT_STORAGE_PREFIX
    """Each model's storageUri is PREFIX/NAME: a repository holding NAME/VERSION/ folders."""
    shutdown_delay_s: float = 5.0
    drain_timeout_s: float = 20.0


def manifests(plan: RepositoryPlan, options: KServeOptions) -> list[dict[str, Any]]:
    """The ServingRuntime first (InferenceServices name it), then one per model, by name."""
    check_name(options.runtime, what="runtime name")
    names: dict[str, str] = {}
    for model in plan.models:
        other = names.setdefault(object_name(model.name), model.name)
        if other != model.name:
            raise DeployUsageError(
                f"models {other!r} and {model.name!r} map to one InferenceService name "
                f"{object_name(model.name)!r}; rename one of them"
            )
    docs = [_runtime(options)]
    docs += [_inference_service(plan, model.name, options) for model in plan.models]
    return docs


def _meta(name: str, options: KServeOptions, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **extra}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def _runtime(options: KServeOptions) -> dict[str, Any]:
    env = {
        "SHIPYARD_DRAIN_TIMEOUT_S": number(options.drain_timeout_s),
        "SHIPYARD_GRPC_PORT": str(GRPC_PORT),
        "SHIPYARD_HOST": "0.0.0.0",
        # KServe's ingress (or a mesh policy) is the access boundary here; see docs/deploy.md.
        "SHIPYARD_INSECURE": "true",
        "SHIPYARD_METRICS_REQUIRE_AUTH": "false",
        "SHIPYARD_PORT": str(HTTP_PORT),
        "SHIPYARD_SHUTDOWN_DELAY_S": number(options.shutdown_delay_s),
    }
    container = {
        "name": "kserve-container",
        "image": options.image,
        "args": [MODEL_DIR],
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        # KServe's convention: the gRPC port is the one named h2c.
        "ports": [
            {"containerPort": HTTP_PORT, "name": "http", "protocol": "TCP"},
            {"containerPort": GRPC_PORT, "name": "h2c", "protocol": "TCP"},
        ],
        "lifecycle": {
            "preStop": {"exec": {"command": ["sleep", str(math.ceil(options.shutdown_delay_s))]}}
        },
        "readinessProbe": _numeric_port(probes()["readinessProbe"]),
        "livenessProbe": _numeric_port(probes()["livenessProbe"]),
        "securityContext": container_security(),
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": _meta(options.runtime, options),
        "spec": {
            "annotations": prometheus_annotations(),
            "supportedModelFormats": [{"name": FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [container],
        },
    }


def _numeric_port(probe: dict[str, Any]) -> dict[str, Any]:
    """KServe renames container ports; a probe names the port by number to survive it."""
    return {**probe, "httpGet": {**probe["httpGet"], "port": HTTP_PORT}}


def _inference_service(plan: RepositoryPlan, model: str, options: KServeOptions) -> dict[str, Any]:
    from shipyard.deploy.k8s import resources

    single = RepositoryPlan(root=plan.root, models=tuple(m for m in plan.models if m.name == model))
    name = object_name(model)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(
            name,
            options,
            annotations={"serving.kserve.io/deploymentMode": "RawDeployment"},
            labels={"app.kubernetes.io/part-of": "shipyard", "shipyard.dev/model": name},
        ),
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": FORMAT},
                    "runtime": options.runtime,
                    "protocolVersion": "v2",
                    "storageUri": f"{options.storage_prefix.rstrip('/')}/{model}",
                    # Declared here too: without it KServe injects a TCP readiness probe.
                    "readinessProbe": _numeric_port(probes()["readinessProbe"]),
                    "resources": resources(single, "1"),
                },
                "terminationGracePeriodSeconds": math.ceil(
                    2 * options.shutdown_delay_s + options.drain_timeout_s
                )
                + GRACE_MARGIN_S,
            }
        },
    }
