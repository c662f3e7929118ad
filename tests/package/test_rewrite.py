"""Rewriting a published version: all or nothing, resealed, and readers it overtakes read again."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import shipyard
import shipyard.package.swap as swap
from shipyard.errors import IntegrityError, PackageError, UsageError
from shipyard.package.manifest import Manifest, read_manifest
from shipyard.package.store import put_file, read_verified, rewrite_version
from shipyard.package.swap import read_stable


@pytest.fixture
def version(affine_model: onnx.ModelProto, repo: Path) -> Path:
    return shipyard.pack(affine_model, name="affine", repo=repo).path


def _tagged(staging: Path, manifest: Manifest) -> Manifest:
    put_file(staging, "notes/readme.txt", b"hello")
    return manifest.model_copy(update={"metadata": {**manifest.metadata, "tag": "new"}})


@pytest.mark.parametrize("one_step", [True, False], ids=["exchange", "two-renames"])
def test_rewrite_adds_files_reseals_and_leaves_nothing_behind(
    version: Path, monkeypatch: pytest.MonkeyPatch, one_step: bool
) -> None:
    if not one_step:  # a file system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(swap, "_rename_exchange", lambda _a, _b: False)
    before = read_verified(version)
    sealed = rewrite_version(version, _tagged)
    assert read_verified(version) == sealed and sealed.metadata["tag"] == "new"
    assert sealed.files["notes/readme.txt"].size == 5
    assert sealed.files["model.onnx"] == before.files["model.onnx"]
    assert [p.name for p in version.parent.iterdir()] == ["1"]


def test_a_failed_transform_changes_nothing(version: Path) -> None:
    before = (version / "manifest.json").read_bytes()

    def broken(staging: Path, manifest: Manifest) -> Manifest:
        (staging / "model.onnx").unlink()
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        rewrite_version(version, broken)
    with pytest.raises(PackageError, match="cannot rename"):
        rewrite_version(version, lambda _s, m: m.model_copy(update={"version": 2}))
    assert (version / "manifest.json").read_bytes() == before
    read_verified(version)
    assert [p.name for p in version.parent.iterdir()] == ["1"]


def test_tampered_or_signed_versions_are_refused(version: Path) -> None:
    (version / "model.sig").write_text("{}")
    with pytest.raises(UsageError, match="--remove-signature"):
        rewrite_version(version, _tagged)
    assert rewrite_version(version, _tagged, remove_signature=True).metadata["tag"] == "new"
    assert not (version / "model.sig").exists()
    (version / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="model.onnx"):
        rewrite_version(version, _tagged)


def test_a_read_overtaken_by_a_rewrite_is_read_again(version: Path) -> None:
    reads: list[Manifest] = []

    def read() -> Manifest:
        manifest = read_manifest(version)
        if not reads:  # the folder is swapped while this first read is under way
            rewrite_version(version, _tagged)
        reads.append(manifest)
        return manifest

    result = read_stable(version, read)
    assert len(reads) == 2 and result.metadata.get("tag") == "new"
