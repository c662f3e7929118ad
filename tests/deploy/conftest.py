"""A small real repository (two models, one with two versions) for the deploy generators."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import shipyard
from tests.conftest import make_affine_onnx


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    shipyard.pack(make_affine_onnx(), name="affine", repo=repo)
    shipyard.pack(make_affine_onnx(), name="affine", repo=repo)
    shipyard.pack(make_affine_onnx(6, 2), name="Tabular_v2", repo=repo)
    return repo


def load_all(path: Path) -> list[dict[str, object]]:
    """Every YAML document of a generated file (parsing is the first check)."""
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(isinstance(d, dict) for d in docs), path
    return docs
