"""Eval/calibration data: reading .npz or arrays, labels, synthetic fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.compression import CompressionConfigError
from shipyard.compression.data import load_dataset, synthetic_dataset
from shipyard.package.tensorspec import TensorSpec

TEXT = [
    TensorSpec(name="input_ids", dtype="int64", shape=(-1, -1)),
    TensorSpec(name="attention_mask", dtype="int64", shape=(-1, -1)),
    TensorSpec(name="token_type_ids", dtype="int64", shape=(-1, -1)),
]
IMAGE = [TensorSpec(name="x", dtype="float32", shape=(-1, 1, 8, 8))]


def test_named_inputs_and_labels(tmp_path: Path) -> None:
    ids = np.ones((3, 5), np.int32)
    np.savez(
        tmp_path / "e.npz", input_ids=ids, attention_mask=ids, token_type_ids=0 * ids, y=[0, 1, 2]
    )
    data = load_dataset(tmp_path / "e.npz", TEXT, what="eval")
    assert data.rows == 3 and data.inputs["input_ids"].dtype == np.int64
    assert data.labels is not None and data.labels.tolist() == [0, 1, 2]
    assert data.source.endswith("e.npz")


def test_single_unnamed_array_for_one_input_model() -> None:
    data = load_dataset(np.zeros((4, 1, 8, 8), np.float32), IMAGE, what="eval")
    assert data.inputs["x"].dtype == np.float32 and data.labels is None
    assert data.tiled(10)["x"].shape == (10, 1, 8, 8)


def test_dtypes_follow_the_runtime_rule(tmp_path: Path) -> None:
    """Cast where the served model would (no value changes), refuse where it would refuse."""
    small = load_dataset(np.arange(256, dtype=np.uint8).reshape(4, 1, 8, 8), IMAGE, what="eval")
    assert small.inputs["x"].dtype == np.float32 and small.inputs["x"].max() == 255
    np.save(tmp_path / "e.npy", np.zeros((4, 1, 8, 8), np.float64))
    with pytest.raises(CompressionConfigError) as info:
        load_dataset(tmp_path / "e.npy", IMAGE, what="eval")
    assert str(info.value).startswith(
        f"{tmp_path / 'e.npy'}: array 'x' has dtype float64, the model expects float32; "
        "converting would change values, so cast it yourself"
    )
    with pytest.raises(CompressionConfigError, match="has dtype int64, the model expects int8"):
        load_dataset(
            {"x": np.array([[300]])},
            [TensorSpec(name="x", dtype="int8", shape=(-1, 1))],
            what="eval",
        )


def test_mismatches_are_explained() -> None:
    with pytest.raises(CompressionConfigError, match="lacks input"):
        load_dataset({"input_ids": np.ones((2, 3))}, TEXT, what="eval")
    with pytest.raises(CompressionConfigError, match="labels for"):
        load_dataset(
            {"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3)}, IMAGE, what="eval"
        )
    with pytest.raises(CompressionConfigError, match="dtype"):
        load_dataset({"x": np.array([["a"]])}, IMAGE, what="eval")


def test_synthetic_text_inputs_look_like_tokens() -> None:
    data = synthetic_dataset(TEXT, rows=2)
    assert (data.inputs["attention_mask"] == 1).all()
    assert (data.inputs["token_type_ids"] == 0).all()
    assert data.inputs["input_ids"].shape == (2, 16) and data.source == "synthetic"
