"""Package writing and verified loading: atomic versions, tamper detection, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.conftest import affine_reference

import shipyard
from shipyard.errors import (
    FormatVersionError,
    InputError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    RuntimeBackendError,
    UsageError,
)
from shipyard.package.manifest import Manifest
from shipyard.package.store import list_versions, write_version


def _pack(model: onnx.ModelProto, repo: Path, **kw: object) -> Path:
    return shipyard.pack(model, name="affine", repo=repo, **kw).path  # type: ignore[arg-type]


def test_pack_writes_manifest_with_signature_hashes_and_lineage(affine_model, repo):
    path = _pack(affine_model, repo)
    assert path == repo / "affine" / "1"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["name"] == "affine" and manifest["version"] == 1
    assert manifest["opset"] == 17
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": [-1, 3]}]
    entry = manifest["files"]["model.onnx"]
    assert entry["size"] == (path / "model.onnx").stat().st_size
    assert len(entry["sha256"]) == 64
    assert manifest["lineage"]["parent"] is None
    assert [s["op"] for s in manifest["lineage"]["steps"]] == ["pack"]
    assert manifest["source"]["framework"] == "onnx"
    assert manifest["conversion_check"]["passed"] is True


def test_versions_increment_and_explicit_version(affine_model, repo):
    assert _pack(affine_model, repo).name == "1"
    assert _pack(affine_model, repo).name == "2"
    assert _pack(affine_model, repo, version=7).name == "7"
    assert _pack(affine_model, repo).name == "8"
    with pytest.raises(UsageError, match="version 7 already exists"):
        _pack(affine_model, repo, version=7)
    assert list_versions(repo / "affine") == [1, 2, 7, 8]


def test_load_infers_latest_and_specific_version(affine_model, repo):
    _pack(affine_model, repo)
    _pack(affine_model, repo)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    model = shipyard.load(repo / "affine")
    assert model.version == 2
    np.testing.assert_allclose(model.infer(x)["y"], affine_reference(affine_model, x), rtol=1e-5)
    assert shipyard.load(repo / "affine", version=1).version == 1
    with pytest.raises(NotFoundError, match="version 3 not found"):
        shipyard.load(repo / "affine", version=3)


def test_crash_mid_write_leaves_no_loadable_version(affine_model, repo, monkeypatch):
    import shipyard.package.swap as swap

    def boom(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(swap, "fsync_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _pack(affine_model, repo)
    assert list_versions(repo / "affine") == []
    assert list((repo / "affine").iterdir()) == []
    with pytest.raises(NotFoundError, match="holds no versions"):
        shipyard.load(repo / "affine")


def test_hidden_temp_folder_is_not_a_version(affine_model, repo):
    (repo / "affine" / ".tmp-half").mkdir(parents=True)
    (repo / "affine" / ".tmp-half" / "model.onnx").write_bytes(b"partial")
    assert list_versions(repo / "affine") == []


def test_flipped_byte_in_model_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 does not match"):
        shipyard.load(path)


def test_truncated_model_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    data = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(data[:-10])
    with pytest.raises(IntegrityError, match=r"model\.onnx: size .* manifest says"):
        shipyard.load(path)


def test_missing_file_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    (path / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match=r"model\.onnx: missing"):
        shipyard.load(path)


def test_unlisted_file_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    (path / "evil.so").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"evil\.so: not listed"):
        shipyard.load(path)


def test_edited_manifest_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [-1, 5]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="edited after packing"):
        shipyard.load(path)


def test_manifest_not_json_and_schema_errors(affine_model, repo):
    path = _pack(affine_model, repo)
    good = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        shipyard.load(path)
    broken = json.loads(good)
    del broken["inputs"]
    (path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="does not follow the manifest schema.*inputs"):
        shipyard.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(NotFoundError):
        shipyard.load(path)


def test_manifest_from_newer_format_refused(affine_model, repo):
    path = _pack(affine_model, repo)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="package format 99.*upgrade Shipyard"):
        shipyard.load(path)


def test_corrupt_onnx_with_matching_hashes_refused(affine_model, repo, tmp_path):
    """A package whose hashes are right but whose model.onnx is not ONNX is still refused."""
    manifest = shipyard.load(_pack(affine_model, repo)).manifest
    fresh = manifest.model_copy(update={"version": 5})
    path, _ = write_version(repo, fresh, {"model.onnx": b"\x08garbage"}, version_given=True)
    with pytest.raises((IntegrityError, RuntimeBackendError), match="model.onnx"):
        shipyard.load(path)


def test_signature_disagreeing_with_graph_refused(affine_model, repo):
    manifest = shipyard.load(_pack(affine_model, repo)).manifest
    spec = manifest.inputs[0].model_copy(update={"dtype": "float64"})
    lying = manifest.model_copy(update={"version": 2, "inputs": [spec]})
    data = affine_model.SerializeToString()
    path, _ = write_version(repo, lying, {"model.onnx": data}, version_given=True)
    with pytest.raises(IntegrityError, match="do not match the manifest"):
        shipyard.load(path)


def test_infer_shape_and_dtype_errors(affine_model, repo):
    model = shipyard.load(_pack(affine_model, repo))
    with pytest.raises(InputError, match=r"input 'x' has shape \[2, 5\].*\[-1, 4\]"):
        model.infer(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match=r"input 'x' has shape \[4\]"):
        model.infer(np.zeros(4, np.float32))
    with pytest.raises(InputError, match="dtype float64.*expects float32"):
        model.infer(np.full((2, 4), 0.1, np.float64))
    with pytest.raises(InputError, match=r"missing input\(s\) \['x'\]"):
        model.infer({"z": np.zeros((2, 4), np.float32)})
    with pytest.raises(InputError, match="must hold strings|dtype str"):
        model.infer(np.array([["a"] * 4]))
    # lossless casts are accepted: small integers into float32
    out = model.infer(np.ones((2, 4), np.int64))
    assert out["y"].shape == (2, 3)


def test_manifest_model_round_trips(affine_model, repo):
    path = _pack(affine_model, repo)
    manifest = Manifest.model_validate_json((path / "manifest.json").read_text())
    assert manifest.digest == manifest.compute_digest()
