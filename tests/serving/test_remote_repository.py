"""s3:// model repositories against moto's S3 server on 127.0.0.1 (never a cloud endpoint).

A real server serves `s3://BUCKET/models` from its local mirror: versions packed and imported
to the bucket by the CLI are served, new ones appear after a poll, one uploaded without a
file is not taken until complete, a tampered one is refused by the loader's hash check, a
removed one is unloaded; a sync downloads only what changed; missing bucket, refused
credentials and a missing client are one line each.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from tests.serving.conftest import scale_graph

from shipyard.cli import main
from shipyard.package.manifest import MANIFEST_NAME
from shipyard.package.remote import RemoteError, RemoteRepository, cache_folder, sync
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import check_repository, load_settings

if os.environ.get("CI"):  # CI installs .[all,dev]: a missing client must fail there, not skip
    import moto.server as moto_server
    import s3fs
else:
    moto_server = pytest.importorskip("moto.server", reason="needs the dev extra (moto[server])")
    s3fs = pytest.importorskip("s3fs", reason="needs the s3 extra (pip install -e '.[s3,dev]')")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), with dummy credentials in the environment."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        for key, value in {**env, "AWS_ENDPOINT_URL": url}.items():
            mp.setenv(key, value)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)  # no profile of this machine's user
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        try:
            yield url
        finally:
            server.stop()


@pytest.fixture
def bucket(endpoint: str) -> str:
    """A fresh bucket; returns its repository URL s3://NAME/models."""
    name = f"models-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/models"


@pytest.fixture
def onnx_file(tmp_path: Path) -> Callable[[float], Path]:
    def _write(factor: float = 2.0) -> Path:
        path = tmp_path / f"scale-{factor}.onnx"
        onnx.save(scale_graph(factor), path)
        return path

    return _write


def _pack(model: Path, repo: str | Path, *extra: str) -> None:
    assert main(["pack", str(model), "--name", "scale", "--repo", str(repo), *extra]) == 0


def _infer(url: str, version: int | None = None) -> httpx.Response:
    path = "/v2/models/scale" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    return httpx.post(url + path, json=body, timeout=10)


def _index(url: str) -> dict[str, dict[str, Any]]:
    rows = httpx.post(url + "/v2/repository/index", json={}, timeout=10).json()
    return {r.get("version", ""): r for r in rows if r["name"] == "scale"}


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _upload_dir(remote: RemoteRepository, local: Path, prefix: str, *, skip: set[str]) -> None:
    """Upload a version folder, manifest.json last, leaving out `skip` (a writer mid-upload)."""
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for rel in [*(f for f in files if f != MANIFEST_NAME), MANIFEST_NAME]:
        if rel not in skip:
            remote.upload(local / rel, f"{prefix}/{rel}")


def test_serve_from_s3_polls_verifies_and_unloads(
    bucket: str, onnx_file: Callable[[float], Path], tmp_path: Path
) -> None:
    _pack(onnx_file(2.0), bucket)  # version 1, uploaded files first and manifest.json last
    settings = load_settings(
        port=0, repository=bucket, repository_cache=tmp_path / "cache", poll_interval_s=0.1
    )
    with start_in_thread(settings=settings, timeout_s=60) as server:
        first = _infer(server.url)
        assert first.status_code == 200, first.text
        assert first.json()["model_version"] == "1"
        assert first.json()["outputs"][0]["data"] == [2, 4, 6, 8]

        _pack(onnx_file(3.0), bucket)  # version 2 while serving
        _wait(lambda: _infer(server.url).json().get("model_version") == "2", "version 2")
        assert _infer(server.url).json()["outputs"][0]["data"] == [3, 6, 9, 12]

        remote = RemoteRepository(bucket)
        staged = tmp_path / "staged"
        _pack(onnx_file(4.0), staged, "--version", "3")
        _upload_dir(remote, staged / "scale" / "3", "scale/3", skip={"model.onnx"})
        repository = server.server.dataplane.manager.repository
        before = getattr(repository, "last_report", None)
        _wait(lambda: getattr(repository, "last_report", None) is not before, "a sync")
        _wait(lambda: "scale/3" in repository.last_report.incomplete, "the partial version seen")
        assert "3" not in _index(server.url)  # manifest there, model.onnx not: not taken
        assert not (repository.root / "scale" / "3").exists()
        remote.upload(staged / "scale" / "3" / "model.onnx", "scale/3/model.onnx")
        _wait(lambda: _infer(server.url).json().get("model_version") == "3", "version 3")

        _pack(onnx_file(5.0), staged, "--version", "4")  # a sealed manifest ...
        tampered = staged / "scale" / "4"
        data = bytearray((tampered / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF  # ... and a file changed after it, same size
        (tampered / "model.onnx").write_bytes(bytes(data))
        _upload_dir(remote, tampered, "scale/4", skip=set())
        _wait(lambda: _index(server.url).get("4", {}).get("reason"), "version 4 refused")
        reason = _index(server.url)["4"]["reason"]
        assert _index(server.url)["4"]["state"] == "UNAVAILABLE"
        assert "sha256 does not match the manifest" in reason, reason
        assert _infer(server.url).json()["model_version"] == "3"  # still serving the good one

        remote.fs.rm(f"{remote.root}/scale/4", recursive=True)
        remote.fs.rm(f"{remote.root}/scale/3", recursive=True)
        _wait(lambda: "3" not in _index(server.url), "version 3 unloaded")
        assert _infer(server.url).json()["model_version"] == "2"
        assert _infer(server.url, 3).status_code == 404


def test_import_to_s3_and_sync_downloads_only_what_changed(
    bucket: str, onnx_file: Callable[[float], Path], tmp_path: Path
) -> None:
    local = tmp_path / "local"
    _pack(onnx_file(2.0), local)
    assert main(["import", str(local / "scale" / "1"), "--repo", bucket]) == 0
    assert main(["import", str(local / "scale" / "1"), "--repo", bucket]) == 0  # next: 2
    remote = RemoteRepository(bucket)
    (tmp_path / "model.toml").write_text("[version_policy]\nlatest = 2\n")
    remote.upload(tmp_path / "model.toml", "scale/model.toml")
    cache = cache_folder(bucket, tmp_path / "cache")

    first = sync(remote, cache)
    assert sorted(first.placed) == ["scale/1", "scale/2"]
    assert (cache / "scale" / "model.toml").read_text() == (tmp_path / "model.toml").read_text()
    onnx_path = cache / "scale" / "1" / "model.onnx"
    mark = (onnx_path.stat().st_ino, onnx_path.stat().st_mtime_ns)

    again = sync(remote, cache)
    assert again.downloaded == [] and again.placed == [] and again.removed == []
    assert (onnx_path.stat().st_ino, onnx_path.stat().st_mtime_ns) == mark

    # one object rewritten: only it is fetched, the others are linked from the cached copy
    remote.upload(local / "scale" / "1" / MANIFEST_NAME, "scale/1/model.sig")
    changed = sync(remote, cache)
    assert changed.downloaded == ["scale/1/model.sig"]
    assert changed.placed == ["scale/1"]
    assert onnx_path.stat().st_ino == mark[0]

    remote.fs.rm(f"{remote.root}/scale/2", recursive=True)
    remote.fs.rm(f"{remote.root}/scale/model.toml")
    gone = sync(remote, cache)
    assert sorted(gone.removed) == ["scale/2", "scale/model.toml"]
    assert not (cache / "scale" / "2").exists() and not (cache / "scale" / "model.toml").exists()
    assert not [p for p in (cache / "scale").iterdir() if p.name.startswith(".")]


def test_version_taken_refuses_and_errors_are_one_line(
    bucket: str, onnx_file: Callable[[float], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _pack(onnx_file(2.0), bucket, "--version", "1")
    capsys.readouterr()
    assert (
        main(["pack", str(onnx_file(2.0)), "--name", "scale", "--repo", bucket, "--version", "1"])
        != 0
    )
    err = capsys.readouterr().err.strip()
    assert "version 1 already exists" in err and len(err.splitlines()) == 1, err

    missing = "s3://no-such-bucket-here/models"
    with pytest.raises(RemoteError, match="bucket 'no-such-bucket-here' does not exist"):
        check_repository(load_settings(repository=missing))
    assert main(["serve", missing, "--port", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1, err


def test_refused_credentials_are_one_line(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.authorization import enable_iam_authentication

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    with enable_iam_authentication(), pytest.raises(RemoteError, match="access refused") as err:
        RemoteRepository(bucket).check()
    assert "\n" not in str(err.value)


def test_missing_client_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(RemoteError, match=r"pip install 'shipyard\[s3\]'"):
        RemoteRepository("s3://bucket/models")


def test_pushed_signed_version_is_served_and_unsigned_refused(
    bucket: str, onnx_file: Callable[[float], Path], tmp_path: Path
) -> None:
    from shipyard.security.keys import init_keys
    from shipyard.security.signing import sign_version

    keys = init_keys(tmp_path / "keys")
    local = tmp_path / "local"
    _pack(onnx_file(2.0), local)
    _pack(onnx_file(3.0), local)
    sign_version(local / "scale" / "1", keys.signing_key)
    for version in (1, 2):
        assert main(["push", str(local / "scale" / str(version)), "--repo", bucket]) == 0
    assert RemoteRepository(bucket).listing()["scale/1/model.sig"][0] > 0
    settings = load_settings(
        port=0,
        repository=bucket,
        repository_cache=tmp_path / "cache",
        poll_interval_s=0,
        require_signature=True,
        public_key=keys.public_key,
    )
    with start_in_thread(settings=settings, timeout_s=60) as server:
        index = _index(server.url)
        assert index["1"]["state"] == "READY", index
        assert index["2"]["state"] == "UNAVAILABLE" and "sig" in index["2"]["reason"], index
        assert _infer(server.url).json()["model_version"] == "1"


def test_two_workers_serve_one_bucket_from_one_cache(
    bucket: str, onnx_file: Callable[[float], Path], tmp_path: Path
) -> None:
    from tests.faults._cli_server import cli_server

    _pack(onnx_file(2.0), bucket)
    cache = tmp_path / "cache"
    with cli_server(bucket, "--workers", "2", "--repository-cache", str(cache)) as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        seen = set()
        for _ in range(40):  # a new connection each: SO_REUSEPORT spreads them
            response = _infer(server.url)
            assert response.status_code == 200, response.text
            seen.add(response.headers["x-shipyard-worker"])
        assert seen == {"1", "2"}
    assert [p.name for p in (cache_folder(bucket, cache) / "scale").iterdir()] == ["1"]
