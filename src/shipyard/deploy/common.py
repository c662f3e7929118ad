"""What every deploy target shares: the repository read once, the container's contract, YAML.

The container contract is KServe's runtime convention, so one image serves plain Docker,
Kubernetes and KServe alike: HTTP on 8080, V2 gRPC on 9000, the model repository read-only
at /mnt/models, a numeric non-root user. Settings reach the server through its own
`SHIPYARD_*` environment variables (serving/settings.py), so nothing secret is baked in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shipyard.errors import ShipyardError, UsageError

HTTP_PORT = 8080
GRPC_PORT = 9000
MODEL_DIR = "/mnt/models"
UID = 10001
"""The image's user and group id: numeric, so `runAsNonRoot` can check it without /etc/passwd."""

MEMORY_FACTOR = 2.0
"""A version with no measured session memory is estimated at its model files' bytes times
this: ONNX Runtime holds the weights once and its arena grows to about as much again for
activations at common batch sizes (see docs/deploy.md, "Resources")."""
BASE_MEMORY_MIB = 256
"""An idle `shipyard serve` process (Python, ONNX Runtime, grpcio, uvicorn) before any model:
about 180 MiB RSS measured here, rounded up for allocator slack."""


class DeployUsageError(UsageError):
    """The deploy command line cannot work (no models, a bad value): exit 2, one line."""


class DeployError(ShipyardError):
    """Writing the deploy files failed for a reason other than the command line."""


@dataclass(frozen=True)
class ServedVersion:
    """One version the server would load at start, with what it is expected to hold."""

    number: int
    file_bytes: int
    measured_mib: float | None
    """Session memory `shipyard compress` measured for this version, when it did."""

    @property
    def memory_mib(self) -> float:
        """Measured session memory, else file bytes × MEMORY_FACTOR."""
        if self.measured_mib is not None:
            return self.measured_mib
        return self.file_bytes * MEMORY_FACTOR / 2**20


@dataclass(frozen=True)
class ModelPlan:
    """One model of the repository: its name and the versions its policy serves."""

    name: str
    versions: tuple[ServedVersion, ...]


@dataclass(frozen=True)
class RepositoryPlan:
    """The repository as a deployment needs it: its models and the memory they take."""

    root: Path
    models: tuple[ModelPlan, ...]

    @property
    def memory_request_mib(self) -> int:
        """The server's expected resident memory: base process plus every served version,
        rounded up to 64 MiB so small changes do not churn the manifests."""
        total = BASE_MEMORY_MIB + sum(v.memory_mib for m in self.models for v in m.versions)
        return int(math.ceil(total / 64) * 64)

    @property
    def measured(self) -> bool:
        """True when every served version's memory was measured, not estimated."""
        return all(v.measured_mib is not None for m in self.models for v in m.versions)


def read_repository(root: Path) -> RepositoryPlan:
    """Each model under `root` with the versions its version policy serves.

    Raises DeployUsageError when `root` is not a folder or holds no model version: a
    deployment of nothing would come up ready and serve 404s.
    """
    from shipyard.package.manifest import read_manifest
    from shipyard.serving.repository import ModelRepository

    if not root.is_dir():
        raise DeployUsageError(
            f"{root}: no such model repository; pass the folder that holds NAME/VERSION/ folders"
        )
    repo = ModelRepository(root)
    models = []
    for name in repo.model_names():
        found = repo.scan(name)
        if found is None or not found.versions:
            continue
        if found.config is None:
            raise DeployUsageError(f"{found.config_error}; fix model.toml before deploying")
        served = []
        for number in found.config.version_policy.select(list(found.versions)):
            manifest = read_manifest(found.path / str(number))
            served.append(
                ServedVersion(
                    number=number,
                    file_bytes=sum(entry.size for entry in manifest.files.values()),
                    measured_mib=_measured_mib(manifest.measured),
                )
            )
        if served:
            models.append(ModelPlan(name=name, versions=tuple(served)))
    if not models:
        raise DeployUsageError(
            f"{root}: holds no model version to deploy; add one with `shipyard pack ... "
            f"--repo {root}`"
        )
    return RepositoryPlan(root=root, models=tuple(models))


def _measured_mib(measured: dict[str, Any]) -> float | None:
    """The candidate's session memory from a `compress` report in a manifest, if recorded."""
    candidate = measured.get("candidate")
    if isinstance(candidate, dict):
        value = candidate.get("session_rss_mb")
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    """Documents as one YAML stream, keys sorted, block style: the same input always gives
    the same bytes, so a regenerated manifest diffs only where something changed."""
    text: str = yaml.safe_dump_all(
        documents, sort_keys=True, default_flow_style=False, explicit_start=True, width=100
    )
    return text


def write_files(out: Path, files: dict[str, str], *, owned: tuple[str, ...] = ()) -> list[Path]:
    """Write `files` (relative path -> text) under `out`; returns the paths, sorted.

    Files in `out` matching an `owned` pattern that this run does not write are removed, so
    `kubectl apply -f out/` never applies an object a previous run wrote (an old HPA).
    """
    out.mkdir(parents=True, exist_ok=True)
    for pattern in owned:
        for stale in out.glob(pattern):
            if stale.is_file() and stale.name not in files:
                stale.unlink()
    written = []
    for relative in sorted(files):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[relative], encoding="utf-8")
        written.append(path)
    return written


def check_name(value: str, *, what: str) -> str:
    """A Kubernetes object name (RFC 1123 label): lower case, digits and '-', at most 63."""
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise DeployUsageError(
            f"{what} {value!r} is not a valid Kubernetes name (lower case letters, digits and "
            "'-', at most 63 characters); pass another"
        )
    return value


def object_name(model: str) -> str:
    """A model name (A-Z, a-z, digits, '_', '.', '-') as a Kubernetes object name."""
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:63].strip("-")
    return name or "model"


IMAGE_ENV = {
    "SHIPYARD_GRPC_PORT": str(GRPC_PORT),
    "SHIPYARD_HOST": "0.0.0.0",
    "SHIPYARD_PORT": str(HTTP_PORT),
    "SHIPYARD_REPOSITORY": MODEL_DIR,
}
"""The settings the image itself sets (`docker run -e` overrides any): bind every interface
(the container's network is the boundary), KServe's ports, the repository mount."""


def number(value: float) -> str:
    """A setting's value as text: `5`, not `5.0`."""
    return str(int(value)) if float(value).is_integer() else str(value)
