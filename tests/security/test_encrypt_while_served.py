"""`shipyard encrypt` and `shipyard keys rewrap` on a version that a running server watches:
every answer is the right one, and the server never logs a failed load."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

import shipyard
from shipyard.cli import main
from shipyard.codecs import decode_response, encode_request
from shipyard.package.manifest import MANIFEST_NAME, Manifest, read_manifest
from shipyard.package.store import SIGNATURE_FILE, rewrite_version
from shipyard.security.keys import KeyPaths
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import load_settings
from tests.conftest import affine_reference

ROUNDS = 3
MAX_REQUESTS = 20_000  # per client thread: bounds the test if the server answers very fast
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_encrypt_and_rewrap_never_show_a_half_written_version(
    affine_model: onnx.ModelProto,
    repo: Path,
    keys: KeyPaths,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = shipyard.pack(affine_model, name="affine", repo=repo).path
    plain = tmp_path / "plain"
    shutil.copytree(version, plain)
    expected = affine_reference(affine_model, X)
    body, _ = encode_request({"x": X})  # JSON: no binary header length
    settings = load_settings(
        repository=repo, host="127.0.0.1", port=0, poll_interval_s=0.02, key_file=keys.data_key
    )
    caplog.set_level(logging.INFO, logger="shipyard")
    answers: list[int] = []
    wrong: list[str] = []
    stop = threading.Event()

    def ask(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                response = client.post("/v2/models/affine/infer", content=body)
                answers.append(response.status_code)
                if response.status_code != 200:
                    wrong.append(f"{response.status_code}: {response.text}")
                    continue
                got = decode_response(response.content).outputs["y"]
                if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
                    wrong.append(f"wrong outputs {got!r}")

    with start_in_thread(settings=settings) as server:
        clients = [threading.Thread(target=ask, args=(server.url,)) for _ in range(2)]
        for client in clients:
            client.start()
        try:
            for _ in range(ROUNDS):
                loads = _loads(caplog)
                args = ["--key-file", str(keys.data_key)]
                assert main(["encrypt", str(version), *args]) == 0
                assert read_manifest(version).encryption is not None
                _wait_for_reload(caplog, loads)
                loads = _loads(caplog)
                rotate = ["keys", "rewrap", str(version), *args, "--new-key-file"]
                assert main([*rotate, str(keys.data_key)]) == 0  # same key, new wrapping
                _wait_for_reload(caplog, loads)
                loads = _loads(caplog)
                rewrite_version(version, lambda staging, _m: _restore(staging, plain))
                _wait_for_reload(caplog, loads)
        finally:
            stop.set()
            for client in clients:
                client.join(60)
    assert not wrong, wrong[:5]
    assert len(answers) >= 10 * ROUNDS, "the clients hardly ran; the test proved nothing"
    trouble = [  # the server's log: no refused load or reload, nothing else gone wrong
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("shipyard") and r.levelno >= logging.WARNING
    ]
    assert not trouble, trouble


def _restore(staging: Path, plain: Path) -> Manifest:
    """Put the plaintext version back (there is no `shipyard decrypt`): the next round."""
    for child in staging.iterdir():
        if child.name != MANIFEST_NAME:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for child in plain.iterdir():
        if child.name not in (MANIFEST_NAME, SIGNATURE_FILE):
            copy = shutil.copytree if child.is_dir() else shutil.copyfile
            copy(child, staging / child.name)
    return read_manifest(plain)


def _loads(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("serving affine version 1") for r in caplog.records)


def _wait_for_reload(caplog: pytest.LogCaptureFixture, before: int) -> None:
    deadline = time.monotonic() + 30
    while _loads(caplog) <= before:
        assert time.monotonic() < deadline, "the server did not reload the rewritten version"
        time.sleep(0.02)
