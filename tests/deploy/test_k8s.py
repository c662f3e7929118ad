"""`shipyard deploy k8s`: strict-valid Kubernetes objects with HTTP probes, a drain that fits
the grace period, a locked-down pod and memory sized from the packages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from shipyard.cli import main
from shipyard.deploy.common import BASE_MEMORY_MIB, MEMORY_FACTOR, read_repository
from tests.deploy.conftest import load_all

pytestmark = pytest.mark.timeout(120)
VERSIONS = ("1.30.0", "1.37.0")
"""Pinned: the oldest Kubernetes still widely run and the newest kubernetes-validate ships."""
IMAGE = "registry.example/shipyard:0.2"


def _generate(models: Path, out: Path, *extra: str) -> dict[str, dict[str, Any]]:
    assert main(["deploy", "k8s", str(models), "--out", str(out), "--image", IMAGE, *extra]) == 0
    docs = {}
    for path in sorted(out.glob("*.yaml")):
        (doc,) = load_all(path)
        docs[str(doc["kind"])] = doc
    return docs


def _pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = docs["Deployment"]["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("extra", [(), ("--hpa", "--no-auth", "--models-pvc", "models")])
def test_every_object_validates_strictly(
    models: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    docs = _generate(models, tmp_path / "k8s", *extra)
    expected = {"Deployment", "Service", "PodDisruptionBudget"} | (
        {"HorizontalPodAutoscaler"} if extra else set()
    )
    assert set(docs) == expected
    for version in VERSIONS:
        for doc in docs.values():
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_a_misspelt_field_fails_the_strict_validation(models: Path, tmp_path: Path) -> None:
    """The validation above can fail: an unknown field is refused."""
    pod = _pod(docs := _generate(models, tmp_path / "k8s"))
    pod["containers"][0]["readinesProbe"] = pod["containers"][0]["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(docs["Deployment"], VERSIONS[-1], strict=True)


def test_probes_are_http_and_the_drain_fits_the_grace_period(models: Path, tmp_path: Path) -> None:
    docs = _generate(models, tmp_path / "k8s", "--shutdown-delay", "7", "--drain-timeout", "30")
    pod = _pod(docs)
    (server,) = pod["containers"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "tcpSocket" not in server[kind] and "httpGet" in server[kind]
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["SHIPYARD_SHUTDOWN_DELAY_S"] == "7" and env["SHIPYARD_DRAIN_TIMEOUT_S"] == "30"
    # preStop sleep, then the server's own delay, then the drain: all before SIGKILL
    assert pod["terminationGracePeriodSeconds"] > 7 + 7 + 30


def test_the_pod_is_locked_down(models: Path, tmp_path: Path) -> None:
    pod = _pod(_generate(models, tmp_path / "k8s"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts and mounts["/run/shipyard"]["readOnly"] is True
    annotations = _generate(models, tmp_path / "again")["Deployment"]["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


def test_auth_is_on_unless_turned_off(models: Path, tmp_path: Path) -> None:
    server = _pod(_generate(models, tmp_path / "a"))["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["SHIPYARD_AUTH"] == "/run/shipyard/tokens.json" and "SHIPYARD_INSECURE" not in env
    pod = _pod(_generate(models, tmp_path / "b", "--no-auth", "--kek-secret", "kek"))
    env2 = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env2["SHIPYARD_INSECURE"]["value"] == "true" and "initContainers" not in pod
    assert env2["SHIPYARD_KEK"]["valueFrom"]["secretKeyRef"] == {"name": "kek", "key": "kek"}


def test_memory_is_sized_from_the_packages(models: Path, tmp_path: Path) -> None:
    plan = read_repository(models)
    assert [(m.name, [v.number for v in m.versions]) for m in plan.models] == [
        ("Tabular_v2", [1]),
        ("affine", [2]),
    ]  # fmt: skip  (latest = 1 by default)
    estimate = (
        BASE_MEMORY_MIB
        + sum(v.file_bytes for m in plan.models for v in m.versions) * MEMORY_FACTOR / 2**20
    )
    resources = _pod(_generate(models, tmp_path / "k8s"))["containers"][0]["resources"]
    request = int(resources["requests"]["memory"].removesuffix("Mi"))
    assert estimate <= request < estimate + 64 and request % 64 == 0
    assert resources["limits"]["memory"] == f"{2 * request}Mi" and "cpu" not in resources["limits"]


def test_hpa_replaces_the_fixed_replica_count(models: Path, tmp_path: Path) -> None:
    docs = _generate(
        models,
        tmp_path / "k8s",
        "--hpa",
        "--min-replicas",
        "3",
        "--max-replicas",
        "9",
        "--cpu-target",
        "60",
    )
    assert "replicas" not in docs["Deployment"]["spec"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    # a later run without --hpa removes the autoscaler it wrote
    docs = _generate(models, tmp_path / "k8s", "--replicas", "3")
    assert "HorizontalPodAutoscaler" not in docs and docs["Deployment"]["spec"]["replicas"] == 3


def test_output_is_deterministic_and_json_lists_the_files(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _generate(models, tmp_path / "a")
    second = _generate(models, tmp_path / "b")
    assert first == second
    assert (tmp_path / "a" / "deployment.yaml").read_bytes() == (
        tmp_path / "b" / "deployment.yaml"
    ).read_bytes()
    capsys.readouterr()
    out = tmp_path / "c"
    assert main(["deploy", "k8s", str(models), "--out", str(out), "--image", IMAGE, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["files"]
    assert sorted(listed) == sorted(str(p) for p in out.iterdir())


def test_measured_session_memory_wins_over_the_file_size_estimate() -> None:
    from shipyard.deploy.common import ModelPlan, RepositoryPlan, ServedVersion, _measured_mib

    assert _measured_mib({"candidate": {"session_rss_mb": 300.5}}) == 300.5
    assert _measured_mib({"candidate": {"session_rss_mb": None}}) is None
    assert _measured_mib({}) is None
    measured = ServedVersion(number=2, file_bytes=10 * 2**20, measured_mib=300.0)
    estimated = ServedVersion(number=1, file_bytes=10 * 2**20, measured_mib=None)
    assert estimated.memory_mib == 10 * MEMORY_FACTOR
    plan = RepositoryPlan(root=Path("m"), models=(ModelPlan(name="a", versions=(measured,)),))
    assert plan.measured and plan.memory_request_mib == 576  # 256 + 300, up to 64 MiB


def test_the_environment_is_read_by_the_server_settings(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SHIPYARD_* variable the pod sets is a real setting with the intended value."""
    from shipyard.deploy.common import IMAGE_ENV
    from shipyard.serving.settings import load_settings

    server = _pod(_generate(models, tmp_path / "k8s", "--no-auth", "--cpu", "2"))["containers"][0]
    env = {**IMAGE_ENV, **{e["name"]: e["value"] for e in server["env"]}}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8080, 9000)
    assert str(settings.repository) == "/mnt/models" and settings.insecure is True
    assert (settings.shutdown_delay_s, settings.drain_timeout_s) == (5.0, 20.0)
    assert settings.metrics_require_auth is False and settings.runtime.intra_op_threads == 2
