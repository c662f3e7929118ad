"""`shipyard inspect` says whether a version carries a reference profile (drift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

import shipyard
from shipyard.cli import main


def test_inspect_shows_the_reference_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    shipyard.pack(model, name="plain", repo=tmp_path, sample_input=x[:8])
    shipyard.pack(model, name="drift", repo=tmp_path, sample_input=x[:8], reference_data={"X": x})

    assert main(["inspect", str(tmp_path / "drift" / "1")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "reference profile: profile/reference.json, 569 rows" in shown

    assert main(["inspect", str(tmp_path / "plain" / "1")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "reference profile: none; drift is off" in shown
