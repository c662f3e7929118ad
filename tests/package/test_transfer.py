"""Moving a version between repositories: renumbered, renamed, verified, lineage kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import shipyard
from shipyard.cli import main
from shipyard.errors import IntegrityError, UsageError
from shipyard.package.store import SIGNATURE_FILE, InvalidNameError, read_verified
from shipyard.package.transfer import import_version


@pytest.fixture(scope="module")
def fitted(iris: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    x, y = iris
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture
def packed(fitted: LogisticRegression, tmp_path: Path) -> Path:
    return shipyard.pack(fitted, name="iris", repo=tmp_path / "src").path


def test_import_under_a_new_number_and_name_loads_and_keeps_lineage(
    packed: Path, tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    dest = tmp_path / "dest"
    result = import_version(packed, repo=dest, name="iris-eu", version=3)
    assert result.path == dest / "iris-eu" / "3"
    assert not result.signature_dropped and result.next_steps == ()
    manifest = read_verified(result.path)  # sits in folder 3 and says version 3
    assert (manifest.name, manifest.version) == ("iris-eu", 3)
    original = read_verified(packed)
    assert manifest.files == original.files
    assert [s.op for s in manifest.lineage.steps] == ["pack", "import"]
    step = manifest.lineage.steps[-1].config
    assert step["source"] == str(packed) and step["name"] == "iris" and step["version"] == 1
    assert step["digest"] == original.digest and "parent" in step
    assert manifest.lineage.parent is None

    x = iris[0][:5].astype(np.float32)
    copy, source = shipyard.load(dest / "iris-eu"), shipyard.load(packed)
    try:
        assert copy.version == 3
        want = source.infer(x)["probabilities"]
        np.testing.assert_allclose(copy.infer(x)["probabilities"], want)
    finally:
        copy.close()
        source.close()

    again = import_version(packed, repo=dest, name="iris-eu")
    assert again.manifest.version == 4  # next free by default
    with pytest.raises(UsageError, match="already exists"):
        import_version(packed, repo=dest, name="iris-eu", version=3)


def test_a_copied_folder_can_be_renumbered(packed: Path, tmp_path: Path) -> None:
    """A version folder copied by hand under another number is imported, not refused."""
    stray = tmp_path / "stray" / "7"
    shutil.copytree(packed, stray)
    with pytest.raises(IntegrityError, match="says version 1 but sits in folder 7"):
        read_verified(stray)
    result = import_version(stray, repo=tmp_path / "src")
    assert result.manifest.name == "iris" and result.manifest.version == 2
    assert result.manifest.lineage.parent is None  # same name: parent kept (none here)


def test_tampered_source_is_refused_and_nothing_is_written(packed: Path, tmp_path: Path) -> None:
    with (packed / "model.onnx").open("r+b") as fh:
        fh.seek(30)
        byte = fh.read(1)
        fh.seek(30)
        fh.write(bytes([byte[0] ^ 0xFF]))
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match="model.onnx"):
        import_version(packed, repo=dest)
    assert not dest.exists() or not any(dest.rglob("manifest.json"))


def test_invalid_new_name_is_refused(packed: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError, match="invalid model name '../x'"):
        import_version(packed, repo=tmp_path / "dest", name="../x")


def test_signed_package_import_drops_the_signature_and_says_to_resign(
    packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.security.keys import init_keys
    from shipyard.security.signing import sign_version, verify_version

    keys = init_keys(tmp_path / "keys")
    sign_version(packed, keys.signing_key)
    dest = tmp_path / "dest"
    result = import_version(packed, repo=dest, name="iris-signed", version=2)
    assert result.signature_dropped
    assert not (result.path / SIGNATURE_FILE).exists()
    assert "shipyard sign" in result.next_steps[0]
    sign_version(result.path, keys.signing_key)  # the copy can be signed again
    verify_version(result.path, keys.public_key)

    code = main(["import", str(packed), "--repo", str(dest), "--name", "iris-cli"])
    assert code == 0
    captured = capsys.readouterr()
    assert "iris-cli version 1" in captured.out
    assert "re-sign" in captured.err and "shipyard sign" in captured.err
    assert not (dest / "iris-cli" / "1" / SIGNATURE_FILE).exists()


def test_encrypted_package_keeps_its_name_and_version(packed: Path, tmp_path: Path) -> None:
    from shipyard.security.encryption import encrypt_version
    from shipyard.security.keys import init_keys, read_secret

    kek = read_secret(init_keys(tmp_path / "keys").data_key)
    encrypt_version(packed, kek)
    dest = tmp_path / "dest"
    with pytest.raises(UsageError, match="import the plaintext package") as exc:
        import_version(packed, repo=dest, version=5)
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="encrypt the copy"):
        import_version(packed, repo=dest, name="other")
    result = import_version(packed, repo=dest)  # same name and version: allowed
    assert result.path == dest / "iris" / "1"
    model = shipyard.load(result.path, kek=kek)
    assert model.version == 1
    model.close()


def test_cli_import_json_and_inspect_shows_lineage(
    packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    args = ["import", str(packed), "--repo", str(dest), "--name", "iris2", "--version", "3"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(dest / "iris2" / "3") and doc["resign_needed"] is False
    assert main(["inspect", str(dest / "iris2")]) == 0
    shown = capsys.readouterr().out
    assert "iris2 version 3" in shown and "steps: pack, import" in shown
    assert main(args) == 2  # version 3 exists now: a usage error
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    assert main(["import", str(packed), "--repo", str(dest), "--name", "my model!"]) == 2
    assert "invalid model name 'my model!'" in capsys.readouterr().err
