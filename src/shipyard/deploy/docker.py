"""`shipyard deploy docker`: a Dockerfile and build context for a model repository.

Two stages: the builder turns the copied Shipyard source into wheels (`pip wheel`), the
runtime stage installs only those wheels, offline, on a slim Python base. The models are
copied in owned by root (the numeric user 10001 can read, never write) or left out to be
mounted read-only at run time. No secret is ever part of the context: tokens, the KEK and
the audit key reach the server as mounted files or environment variables at run time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from shipyard.deploy.common import (
    GRPC_PORT,
    HTTP_PORT,
    IMAGE_ENV,
    MODEL_DIR,
    UID,
    DeployUsageError,
    read_repository,
)

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
SOURCE_DIR = "shipyard-src"
MODELS_DIR = "models"
_SOURCE_FILES = ("pyproject.toml", "README.md")
_IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".tmp-*", ".mypy_cache", ".ruff_cache", ".git")


@dataclass(frozen=True)
class DockerContext:
    """What `write_docker_context` wrote."""

    out: Path
    files: tuple[Path, ...]
    """Every file written, sorted (the copied source and models included)."""
    models: tuple[str, ...]
    """The models copied into the image (empty with `include_models=False`)."""


def project_source() -> Path:
    """The Shipyard checkout this code runs from (the folder with pyproject.toml)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "shipyard").is_dir():
        raise DeployUsageError(
            "this Shipyard is not installed from a source checkout; pass --source DIR "
            "(a folder with pyproject.toml and src/shipyard)"
        )
    return root


def write_docker_context(
    repository: Path,
    out: Path,
    *,
    source: Path | None = None,
    include_models: bool = True,
    base_image: str = DEFAULT_BASE_IMAGE,
) -> DockerContext:
    """Write `out/Dockerfile`, `out/.dockerignore`, the Shipyard source and (by default) a
    copy of the repository's served models; `docker build out` then builds the image."""
    plan = read_repository(repository)
    if out.resolve().is_relative_to(repository.resolve()):
        raise DeployUsageError(
            f"--out {out} is inside the repository {repository}; write the context elsewhere"
        )
    src = source or project_source()
    for name in (*_SOURCE_FILES, "src/shipyard"):
        if not (src / name).exists():
            raise DeployUsageError(f"{src}: has no {name}; pass the Shipyard source checkout")
    if out.exists() and any(out.iterdir()):
        for stale in (SOURCE_DIR, MODELS_DIR):
            shutil.rmtree(out / stale, ignore_errors=True)  # only what this writer owns
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*_IGNORED)
    for name in _SOURCE_FILES:
        (out / SOURCE_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, out / SOURCE_DIR / name)
    shutil.copytree(src / "src" / "shipyard", out / SOURCE_DIR / "src" / "shipyard", ignore=ignore)
    copied: list[str] = []
    if include_models:
        for model in plan.models:
            shutil.copytree(repository / model.name, out / MODELS_DIR / model.name, ignore=ignore)
            copied.append(model.name)
    else:
        (out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        (out / MODELS_DIR / ".keep").write_text("", encoding="utf-8")
    (out / "Dockerfile").write_text(dockerfile(base_image=base_image), encoding="utf-8")
    (out / ".dockerignore").write_text(dockerignore(), encoding="utf-8")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return DockerContext(out=out, files=tuple(files), models=tuple(copied))


def dockerfile(*, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The Dockerfile text: the same for every repository, so it diffs only when Shipyard's
    packaging changes; the models come in with the `models/` folder of the context."""
    from shipyard import __version__

    env = " \\\n    ".join(f"{key}={value}" for key, value in sorted(IMAGE_ENV.items()))
    return f"""\
# syntax=docker/dockerfile:1
# Written by `shipyard deploy docker` (Shipyard {__version__}); see docs/deploy.md.
# Pin the base by digest (python:3.11-slim-bookworm@sha256:...) for reproducible builds.
ARG BASE_IMAGE={base_image}

# Stage 1: wheels of Shipyard and every dependency, built from the copied source.
FROM ${{BASE_IMAGE}} AS builder
WORKDIR /src
COPY {SOURCE_DIR}/ ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./

# Stage 2: a slim runtime with only those wheels installed, offline.
FROM ${{BASE_IMAGE}}
ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    HOME=/tmp \\
    {env}
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \\
    pip install --no-cache-dir --no-index --find-links=/wheels shipyard=={__version__} \\
    && useradd --system --uid {UID} --user-group --no-create-home \\
       --shell /usr/sbin/nologin shipyard
# Owned by root: user {UID} reads the models and can never change them.
COPY {MODELS_DIR}/ {MODEL_DIR}/
USER {UID}:{UID}
EXPOSE {HTTP_PORT} {GRPC_PORT}
# No HEALTHCHECK: Kubernetes and KServe ignore it and probe /v2/health/ready and
# /v2/health/live over HTTP themselves (docs/deploy.md); with plain Docker, poll
# /v2/health/ready from outside, which also sees through TLS and port overrides.
# Exec form: the server is PID 1 and gets SIGTERM itself, so it drains (docs/serving.md).
ENTRYPOINT ["shipyard", "serve"]
"""


def dockerignore() -> str:
    """Keep caches and anything secret-looking out of the build context."""
    lines = [
        "# Written by `shipyard deploy docker`: what never goes into the image.",
        "**/__pycache__",
        "**/*.py[co]",
        "**/.tmp-*",
        "**/.git",
        "**/*.key",
        "**/*.pem",
        "**/tokens*.json",
        "**/.env",
    ]
    return "\n".join(lines) + "\n"
