"""`shipyard deploy k8s`: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget.

Drain, in the order Kubernetes does it: the pod turns Terminating and its endpoint is
withdrawn from Services (asynchronously); the `preStop` sleep holds SIGTERM back for
`shutdown_delay_s` so that withdrawal lands while the server still answers normally; then
SIGTERM starts the server's own drain (readiness 503 for another `shutdown_delay_s`, for
load balancers that watch readiness rather than endpoints, then `drain_timeout_s` for work
in flight). The grace period covers all three plus a margin for unloading models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shipyard.deploy.common import (
    GRPC_PORT,
    HTTP_PORT,
    MODEL_DIR,
    UID,
    DeployUsageError,
    RepositoryPlan,
    number,
)

GRACE_MARGIN_S = 10
"""Seconds past delay + delay + drain for unloading models and closing the audit log."""
TOKENS_DIR = "/run/shipyard"
"""Where the init container puts the token file, 0600 and owned by the server's user."""


@dataclass(frozen=True)
class K8sOptions:
    """What `shipyard deploy k8s` is told; every field has a flag of the same name."""

    image: str
    name: str = "shipyard"
    namespace: str | None = None
    replicas: int = 2
    hpa: bool = False
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_target: int = 70
    """Average CPU utilization (% of the request) the autoscaler keeps replicas at."""
    cpu: str = "1"
    """CPU request per pod; no CPU limit is set (throttling shows up as tail latency)."""
    shutdown_delay_s: float = 5.0
    drain_timeout_s: float = 20.0
    auth_secret: str | None = None
    """Secret with key `tokens.json` (`shipyard tokens create`); None with `no_auth`."""
    no_auth: bool = False
    kek_secret: str | None = None
    """Secret with key `kek`: the key-encryption key for encrypted packages ($SHIPYARD_KEK)."""
    models_pvc: str | None = None
    """PersistentVolumeClaim holding the repository; None = the models are in the image."""
    metrics_require_auth: bool = False

    def check(self) -> None:
        if self.replicas < 1 or self.min_replicas < 1:
            raise DeployUsageError("--replicas and --min-replicas must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise DeployUsageError("--max-replicas must be at least --min-replicas")
        if not 1 <= self.cpu_target <= 100:
            raise DeployUsageError("--cpu-target is a percentage of the CPU request: 1 to 100")
        if self.shutdown_delay_s < 0 or self.drain_timeout_s < 0:
            raise DeployUsageError("--shutdown-delay and --drain-timeout must not be negative")
        if self.no_auth and self.auth_secret:
            raise DeployUsageError("--auth-secret and --no-auth contradict; pass one")

    @property
    def tokens_secret(self) -> str | None:
        if self.no_auth:
            return None
        return self.auth_secret or f"{self.name}-tokens"

    @property
    def grace_period_s(self) -> int:
        """preStop sleep + the server's shutdown delay + drain timeout + margin, whole seconds."""
        return math.ceil(2 * self.shutdown_delay_s + self.drain_timeout_s) + GRACE_MARGIN_S


def manifests(plan: RepositoryPlan, options: K8sOptions) -> list[dict[str, Any]]:
    """Deployment, Service, PodDisruptionBudget and (with `hpa`) the autoscaler, in that
    order, for the server of `plan` in `options.image`."""
    options.check()
    labels = {"app.kubernetes.io/name": options.name, "app.kubernetes.io/part-of": "shipyard"}
    docs = [
        _deployment(plan, options, labels),
        _service(options, labels),
        _disruption_budget(options, labels),
    ]
    if options.hpa:
        docs.append(_autoscaler(options, labels))
    return docs


def _meta(options: K8sOptions, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": options.name, "labels": dict(labels)}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def container_security() -> dict[str, Any]:
    """What every Shipyard container runs with (also the KServe runtime's)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def probes() -> dict[str, Any]:
    """HTTP probes (never TCP: an open port is not a loaded model). The startup probe gives
    model loading up to five minutes before liveness may restart the container."""
    return {
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 60,
            "timeoutSeconds": 2,
        },
    }


def ports() -> list[dict[str, Any]]:
    return [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]


def resources(plan: RepositoryPlan, cpu: str) -> dict[str, Any]:
    """Memory requested = the repository's expected RSS; the limit doubles it, room for a
    second version during a rollout or a reload. No CPU limit (see K8sOptions.cpu)."""
    request = plan.memory_request_mib
    return {
        "requests": {"cpu": cpu, "memory": f"{request}Mi"},
        "limits": {"memory": f"{2 * request}Mi"},
    }


def prometheus_annotations() -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }


def _env(options: K8sOptions) -> list[dict[str, Any]]:
    values = {
        "SHIPYARD_SHUTDOWN_DELAY_S": number(options.shutdown_delay_s),
        "SHIPYARD_DRAIN_TIMEOUT_S": number(options.drain_timeout_s),
        "SHIPYARD_METRICS_REQUIRE_AUTH": str(options.metrics_require_auth).lower(),
    }
    if options.tokens_secret:
        values["SHIPYARD_AUTH"] = f"{TOKENS_DIR}/tokens.json"
    else:
        values["SHIPYARD_INSECURE"] = "true"
    if options.cpu.isdigit():  # ONNX Runtime would otherwise size its pool to the node
        values["SHIPYARD_RUNTIME__INTRA_OP_THREADS"] = options.cpu
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(values.items())]
    if options.kek_secret:
        env.append(
            {
                "name": "SHIPYARD_KEK",
                "valueFrom": {"secretKeyRef": {"name": options.kek_secret, "key": "kek"}},
            }
        )
    return env


def _deployment(
    plan: RepositoryPlan, options: K8sOptions, labels: dict[str, str]
) -> dict[str, Any]:
    delay = math.ceil(options.shutdown_delay_s)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    if options.models_pvc:
        mounts.append({"name": "models", "mountPath": MODEL_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": options.models_pvc, "readOnly": True},
            }
        )
    init: list[dict[str, Any]] = []
    if options.tokens_secret:
        # The server refuses a token file others can read; a Secret volume gives a non-root
        # user at best 0440 (fsGroup), so an init container copies it to memory as 0600.
        mounts.append({"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": True})
        volumes += [
            {"name": "tokens", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {
                "name": "tokens-secret",
                "secret": {"secretName": options.tokens_secret, "defaultMode": 0o400},
            },
        ]
        init.append(
            {
                "name": "tokens",
                "image": options.image,
                "command": ["install", "-m", "0600", "/secret/tokens.json", TOKENS_DIR + "/"],
                "securityContext": container_security(),
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "volumeMounts": [
                    {"name": "tokens-secret", "mountPath": "/secret", "readOnly": True},
                    {"name": "tokens", "mountPath": TOKENS_DIR},
                ],
            }
        )
    container = {
        "name": "shipyard",
        "image": options.image,
        "env": _env(options),
        "ports": ports(),
        **probes(),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(delay)]}}},
        "resources": resources(plan, options.cpu),
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": [container],
        "securityContext": {
            "fsGroup": UID,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": options.grace_period_s,
        "volumes": volumes,
    }
    if init:
        pod["initContainers"] = init
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(labels)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {"labels": dict(labels), "annotations": prometheus_annotations()},
            "spec": pod,
        },
    }
    if not options.hpa:  # with an autoscaler, a fixed count here would fight it on apply
        spec["replicas"] = options.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(options, labels),
        "spec": spec,
    }


def _service(options: K8sOptions, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(options, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(labels),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def _disruption_budget(options: K8sOptions, labels: dict[str, str]) -> dict[str, Any]:
    # maxUnavailable, not minAvailable: with one replica a minAvailable of 1 blocks every
    # node drain forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(options, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }


def _autoscaler(options: K8sOptions, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(options, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": options.cpu_target},
                    },
                }
            ],
        },
    }
