"""`shipyard deploy` usage errors: exit 2 and one line on stderr that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["deploy", "docker", "{models}"], "--out is required"),
        (["deploy", "k8s", "{models}", "--out", "{out}"], "--image is required"),
        (["deploy", "kserve", "{models}", "--out", "{out}"], "--image is required"),
        (["deploy", "k8s", "{empty}", "--out", "{out}", "--image", "i"], "holds no model version"),
        (["deploy", "kserve", "{missing}", "--out", "{out}", "--image", "i"], "no such model repository"),
        (["deploy", "k8s", "{models}", "--out", "{out}", "--image", "i", "--name", "Bad_Name"], "not a valid Kubernetes name"),
        (["deploy", "k8s", "{models}", "--out", "{out}", "--image", "i", "--hpa", "--min-replicas", "5", "--max-replicas", "2"], "--max-replicas"),
        (["deploy", "k8s", "{models}", "--out", "{out}", "--image", "i", "--no-auth", "--auth-secret", "t"], "contradict"),
        (["deploy", "k8s", "{models}", "--out", "{out}", "--image", "i", "--cpu-target", "0"], "--cpu-target"),
        (["deploy", "docker", "{models}", "--out", "{models}/build"], "inside the repository"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"models": models, "out": tmp_path / "out", "empty": tmp_path / "empty",
             "missing": tmp_path / "missing"}  # fmt: skip
    capsys.readouterr()
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_broken_model_toml_is_a_usage_error(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models / "affine" / "model.toml").write_text("instances = 'many'\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["deploy", "k8s", str(models), "--out", str(tmp_path / "o"), "--image", "i"]) == 2
    err = capsys.readouterr().err
    assert "model.toml" in err and err.count("\n") == 1
