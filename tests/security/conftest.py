"""Fixtures for security tests: a packaged tiny model and a set of keys."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import shipyard
from shipyard.security.keys import KeyPaths, init_keys


@pytest.fixture
def version_dir(affine_model: onnx.ModelProto, repo: Path) -> Path:
    return shipyard.pack(affine_model, name="affine", repo=repo).path


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own SHIPYARD_KEK must not change what these tests see.
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
