"""The `shipyard` command line: exit codes, one-line errors, JSON output, the pack → predict path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.cli import main


@pytest.fixture(scope="module")
def fitted(iris: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    x, y = iris
    return LogisticRegression(max_iter=500).fit(x, y)


def _malicious_pickle(path: Path, canary: Path) -> None:
    # protocol-0 GLOBAL + REDUCE that would call os.system if unpickled; never loaded here
    payload = f"cos\nsystem\n(Vtouch {canary}\ntR.".encode()
    path.write_bytes(payload)


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["pack", "--no-such-flag"])
    assert exc.value.code == 2


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("pack", "scan", "inspect", "predict", "serve", "compress", "sign", "import"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        shown = capsys.readouterr().out
        assert "example" in shown
        if command == "import":
            assert "re-sign the copy with `shipyard sign`" in shown


def test_joblib_refused_then_trusted(
    tmp_path: Path, fitted: LogisticRegression, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "clf.joblib"
    joblib.dump(fitted, path)
    repo = tmp_path / "models"
    assert main(["pack", str(path), "--name", "iris", "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and err.count("\n") == 1
    assert not repo.exists() or not any(repo.rglob("manifest.json"))
    code = main(["pack", str(path), "--name", "iris", "--repo", str(repo), "--trust-pickle"])
    assert code == 0
    assert "packed iris version 1" in capsys.readouterr().out


def test_scan_exit_codes_and_json(
    tmp_path: Path, fitted: LogisticRegression, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(fitted))
    assert main(["scan", str(good)]) == 0
    assert "clean" in capsys.readouterr().out
    canary = tmp_path / "canary"
    bad = tmp_path / "bad.pkl"
    _malicious_pickle(bad, canary)
    assert main(["scan", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["safe"] is False
    assert any(f["global"] == "os.system" for f in report["findings"])
    code = main(["pack", str(bad), "--name", "x", "--repo", str(tmp_path / "m"), "--trust-pickle"])
    assert code == 1
    assert "os.system" in capsys.readouterr().err
    assert not canary.exists()


def test_pack_inspect_predict(
    tmp_path: Path,
    fitted: LogisticRegression,
    iris: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import skops.io as sio

    x, _ = iris
    model_file = tmp_path / "clf.skops"
    sio.dump(fitted, model_file)
    sample = tmp_path / "x.npy"
    np.save(sample, x[:20])
    repo = tmp_path / "models"
    args = ["pack", str(model_file), "--name", "iris", "--repo", str(repo)]
    assert main([*args, "--sample-input", str(sample), "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["manifest"]["conversion_check"]["samples"] == 20

    assert main(["inspect", str(repo / "iris")]) == 0
    shown = capsys.readouterr().out
    assert "hashes verified" in shown and "probabilities" in shown and "sha256" in shown
    assert main(["inspect", str(repo / "iris"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "iris"

    rows = x[:3].astype(np.float32)
    request = {
        "id": "r1",
        "inputs": [
            {"name": "X", "shape": [3, 4], "datatype": "FP32", "data": rows.ravel().tolist()}
        ],
    }
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    assert main(["predict", str(repo / "iris"), "--input", str(request_file)]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["id"] == "r1" and response["model_name"] == "iris"
    outputs = {o["name"]: o for o in response["outputs"]}
    assert outputs["label"]["data"] == fitted.predict(rows.astype(np.float64)).tolist()
    assert outputs["probabilities"]["shape"] == [3, 3]

    bad = dict(request, inputs=[dict(request["inputs"][0], shape=[3, 5])])
    request_file.write_text(json.dumps(bad))
    # a usage error (2): the request does not fit the model's signature
    assert main(["predict", str(repo / "iris"), "--input", str(request_file)]) == 2
    assert "error:" in capsys.readouterr().err


def test_tampered_package_is_a_one_line_error(
    tmp_path: Path, fitted: LogisticRegression, capsys: pytest.CaptureFixture[str]
) -> None:
    import shipyard

    path = shipyard.pack(fitted, name="iris", repo=tmp_path).path
    with (path / "model.onnx").open("r+b") as fh:
        fh.seek(40)
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.onnx" in err and err.count("\n") == 1


def test_makefile_demo_command_parses() -> None:
    """`make demo` runs a shipyard command line; it must stay one the CLI accepts."""
    from shipyard.cli import build_parser

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    lines = [line.strip() for line in makefile.splitlines() if "bin/shipyard demo" in line]
    assert lines, "Makefile has no `shipyard demo` recipe"
    args = lines[0].split("bin/shipyard", 1)[1].split()
    parsed = build_parser().parse_args(args)
    assert parsed.command == "demo"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_serve_refuses_a_missing_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.serving.settings import check_repository, load_settings

    missing = tmp_path / "models"
    assert main(["serve", str(missing), "--port", "0"]) == 2
    err = _one_line_error(capsys)
    assert f"{missing}/: no such model repository (create it or pass the folder" in err
    missing.mkdir()  # an empty repository is fine: models can be copied in later
    assert check_repository(load_settings(repository=missing)) == missing
    (tmp_path / "file").write_text("")
    assert main(["serve", str(tmp_path / "file"), "--port", "0"]) == 2
    assert "not a folder" in _one_line_error(capsys)


@pytest.mark.parametrize("name", ["my model!", "../x", ".hidden", "x" * 129])
def test_invalid_pack_name_is_refused_before_converting(
    tmp_path: Path, fitted: LogisticRegression, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import skops.io as sio

    model_file = tmp_path / "clf.skops"
    sio.dump(fitted, model_file)
    repo = tmp_path / "models"
    assert main(["pack", str(model_file), "--name", name, "--repo", str(repo)]) == 2
    err = _one_line_error(capsys)
    assert f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (up to 128" in err
    assert not repo.exists()


def test_tuple_sample_and_object_npz_are_one_line_usage_errors(
    tmp_path: Path,
    fitted: LogisticRegression,
    iris: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shipyard
    from shipyard.errors import UsageError

    x = iris[0][:4]
    with pytest.raises(UsageError, match="dict keyed by input name") as exc:
        shipyard.pack(fitted, name="iris", repo=tmp_path, sample_input=(x, x))  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="a list of 2 items"):
        shipyard.pack(fitted, name="iris", repo=tmp_path, sample_input=[x, x])  # type: ignore[arg-type]

    npz = tmp_path / "objects.npz"
    np.savez(npz, X=np.array([["a", 1.0]], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(npz, allow_pickle=False)["X"]  # what numpy says; ours must say what to do
    model_file = tmp_path / "clf.joblib"
    joblib.dump(fitted, model_file)
    args = ["pack", str(model_file), "--name", "iris", "--repo", str(tmp_path / "m")]
    assert main([*args, "--trust-pickle", "--sample-input", str(npz)]) == 2
    err = _one_line_error(capsys)
    assert "holds Python objects (dtype=object)" in err
    assert "save plain numeric or string arrays (np.str_)" in err
    npy = tmp_path / "objects.npy"
    np.save(npy, np.array(["a", None], dtype=object))
    assert main([*args, "--trust-pickle", "--sample-input", str(npy)]) == 2
    assert "holds Python objects (dtype=object)" in _one_line_error(capsys)


def test_onnx_file_source_and_uncompared_check_are_shown_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    from tests.conftest import make_affine_onnx

    model = make_affine_onnx()
    model.producer_name, model.producer_version = "pytorch", "2.9.0"
    path = tmp_path / "affine.onnx"
    onnx.save(model, str(path))
    repo = tmp_path / "models"
    assert main(["pack", str(path), "--name", "affine", "--repo", str(repo), "--json"]) == 0
    source = json.loads(capsys.readouterr().out)["manifest"]["source"]
    assert source["framework"] == "pytorch" and source["framework_version"] == "2.9.0"
    assert source["converter"] == "onnx-file"
    assert source["converter_version"] == onnx.__version__
    assert main(["inspect", str(repo / "affine")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "source: pytorch 2.9.0 via onnx-file" in shown
    assert "not compared (no original to compare with; trial run on" in shown
    assert "max abs diff" not in shown


def test_validation_and_os_errors_are_one_line_unless_debugging(
    tmp_path: Path, fitted: LogisticRegression, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydantic import ValidationError

    import shipyard

    model_file = tmp_path / "clf.joblib"
    joblib.dump(fitted, model_file)
    args = ["pack", str(model_file), "--name", "iris", "--trust-pickle"]
    assert main([*args, "--repo", str(tmp_path / "m"), "--atol", "-1"]) == 2
    assert "atol" in _one_line_error(capsys)
    with pytest.raises(ValidationError):
        main(["--debug", *args, "--repo", str(tmp_path / "m"), "--atol", "-1"])

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert main([*args, "--repo", str(blocker / "models")]) == 1
    err = _one_line_error(capsys)
    assert str(blocker) in err and "permissions" in err

    packed = shipyard.pack(fitted, name="iris", repo=tmp_path / "src").path
    assert main(["import", str(packed), "--repo", str(blocker)]) == 1
    _one_line_error(capsys)


def test_inspect_example_is_a_request_predict_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stored sample becomes a ready-to-send V2 request (BERT-like: ids in the vocab)."""
    import onnx

    from tests.graphs import bert_like, vad_like

    onnx.save(bert_like(), str(tmp_path / "bert.onnx"))
    repo = tmp_path / "models"
    assert main(["pack", str(tmp_path / "bert.onnx"), "--name", "bert", "--repo", str(repo)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(repo / "bert")]) == 0
    shown = capsys.readouterr().out
    assert "warm-up sample: samples/warmup.npz" in shown and "batching: on" in shown
    assert main(["inspect", str(repo / "bert"), "--example"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in body["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    assert main(["predict", str(repo / "bert"), "--input", str(request)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["outputs"][0]["name"] == "last_hidden_state"

    onnx.save(vad_like(), str(tmp_path / "vad.onnx"))
    assert main(["pack", str(tmp_path / "vad.onnx"), "--name", "vad", "--repo", str(repo)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(repo / "vad")]) == 0
    assert "batching: off: input state: float32[2, ?, 1] has a fixed first dim" in " ".join(
        capsys.readouterr().out.split()
    )


def _iris_request(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> Path:
    rows = iris[0][:2].astype(np.float32)
    request = {
        "inputs": [
            {"name": "X", "shape": [2, 4], "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return path


def test_inspect_says_what_it_checked_and_pub_catches_a_resealed_package(
    tmp_path: Path,
    fitted: LogisticRegression,
    iris: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tampered package with its manifest re-sealed passed `inspect` as plain "verified"."""
    import shipyard
    from shipyard.package.hashing import sha256_file
    from shipyard.package.manifest import FileEntry
    from shipyard.package.store import read_verified
    from shipyard.security.keys import init_keys
    from shipyard.security.signing import sign_version

    path = shipyard.pack(fitted, name="iris", repo=tmp_path / "models").path
    assert main(["inspect", str(path)]) == 0
    assert "hashes verified; unsigned" in capsys.readouterr().out
    keys = init_keys(tmp_path / "keys")
    sign_version(path, keys.signing_key)
    assert main(["inspect", str(path)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "signature present but not checked (pass --pub KEY)" in shown
    assert main(["inspect", str(path), "--pub", str(keys.public_key)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"signature verified (key {keys.public_key})" in shown

    request = _iris_request(tmp_path, iris)
    assert main(["predict", str(path), "--input", str(request), "--pub", str(keys.public_key)]) == 0
    capsys.readouterr()

    # Tamper: change a metadata-free byte of the model, then re-seal the manifest around it.
    manifest = read_verified(path)
    model = path / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    entry = FileEntry(sha256=sha256_file(model), size=model.stat().st_size)
    files = {**manifest.files, "model.onnx": entry}
    forged = manifest.model_copy(update={"files": files}).sealed()
    (path / "manifest.json").write_text(forged.to_json(), encoding="utf-8")
    assert main(["inspect", str(path)]) == 0  # the hashes match: only the signature can tell
    assert "not checked" in " ".join(capsys.readouterr().out.split())
    assert main(["inspect", str(path), "--pub", str(keys.public_key)]) == 1
    err = _one_line_error(capsys)
    assert "model.onnx" in err and "changed since signing" in err
    assert main(["predict", str(path), "--input", str(request), "--pub", str(keys.public_key)]) == 1
    assert "model.onnx" in _one_line_error(capsys)


def test_predict_key_file_opens_an_encrypted_package(
    tmp_path: Path,
    fitted: LogisticRegression,
    iris: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error told users to `pass --key-file`, which predict did not have."""
    import shipyard
    from shipyard.security.encryption import encrypt_version
    from shipyard.security.keys import init_keys, read_secret

    monkeypatch.delenv("SHIPYARD_KEK", raising=False)
    path = shipyard.pack(fitted, name="iris", repo=tmp_path / "models").path
    keys = init_keys(tmp_path / "keys")
    encrypt_version(path, read_secret(keys.data_key))
    request = _iris_request(tmp_path, iris)
    assert main(["predict", str(path), "--input", str(request)]) == 2  # usage: a key is needed
    assert "pass --key-file or set SHIPYARD_KEK" in _one_line_error(capsys)
    args = ["predict", str(path), "--input", str(request), "--key-file", str(keys.data_key)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "iris"
