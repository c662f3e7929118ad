"""`shipyard deploy kserve`: a ServingRuntime and one InferenceService per model, valid
against KServe's own CRD schemas (vendored in tests/deploy/crds/)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shipyard.cli import main
from tests.deploy.conftest import load_all

pytestmark = pytest.mark.timeout(120)
CRDS = Path(__file__).parent / "crds"
IMAGE = "registry.example/shipyard:0.2"


@functools.cache
def _schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served, stored version of KServe's CRD for `kind`."""
    file = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}[kind]
    crd = yaml.load((CRDS / f"serving.kserve.io_{file}.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(_schema(doc["kind"])).validate(doc)


def _generate(models: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    assert main(["deploy", "kserve", str(models), "--out", str(out), "--image", IMAGE, *extra]) == 0
    return [doc for path in sorted(out.glob("*.yaml")) for doc in load_all(path)]


def test_every_document_validates_against_kserve_schemas(models: Path, tmp_path: Path) -> None:
    docs = _generate(models, tmp_path / "kserve")
    assert sorted(d["kind"] for d in docs) == ["InferenceService"] * 2 + ["ServingRuntime"]
    for doc in docs:
        _validate(doc)
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    runtime["spec"]["protocolVersions"] = "v2"  # a string, not a list: the schema refuses it
    with pytest.raises(jsonschema.ValidationError):
        _validate(runtime)


def test_the_runtime_follows_kserve_conventions(models: Path, tmp_path: Path) -> None:
    (runtime,) = [d for d in _generate(models, tmp_path / "k") if d["kind"] == "ServingRuntime"]
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["onnx"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["args"] == ["/mnt/models"]
    assert sorted(p["containerPort"] for p in container["ports"]) == [8080, 9000]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_one_raw_deployment_inference_service_per_model(models: Path, tmp_path: Path) -> None:
    docs = _generate(models, tmp_path / "k", "--storage-prefix", "s3://bucket/shipyard/")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    assert sorted(services) == ["affine", "tabular-v2"]  # Tabular_v2 made a valid object name
    for name, isvc in services.items():
        assert (
            isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        )
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == "shipyard" and model["modelFormat"] == {"name": "onnx"}
        assert model["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert model["storageUri"].startswith("s3://bucket/shipyard/")
        assert model["storageUri"].rsplit("/", 1)[1].lower().replace("_", "-") == name
    assert (tmp_path / "k" / "inferenceservice-affine.yaml").is_file()


def test_models_whose_names_collide_are_refused(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models / "Affine").mkdir()
    for version in (models / "affine").iterdir():
        if version.is_dir():
            import shutil

            shutil.copytree(version, models / "Affine" / version.name)
    assert (
        main(["deploy", "kserve", str(models), "--out", str(tmp_path / "k"), "--image", IMAGE]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rename one of them" in err
