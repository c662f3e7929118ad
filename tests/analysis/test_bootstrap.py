"""The multiplicity bootstrap gives what the index-matrix bootstrap gives, to the last digit."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.analysis.bootstrap import FLIP, WEIGHTED, draws, weighted_samples
from shipyard.analysis.compare import BootstrapConfig, bootstrap_indices, index_blocks
from shipyard.analysis.evaluate import Predictions
from shipyard.analysis.resample import class_codes, per_resample
from tests.analysis.conftest import Packed, onnx_outputs


def _predictions(packed: Packed, version: int) -> Predictions:
    out = onnx_outputs(packed.model, version, packed.eval[packed.features].to_numpy())
    return Predictions(
        task="classification",
        predicted=out["label"],
        scores=out["probabilities"],
        classes=sorted(set(packed.eval["y"])),
    )


@pytest.mark.parametrize("count", [1, 7, 1000])
def test_draws_are_the_index_matrix_block_by_block(count: int) -> None:
    config = BootstrapConfig(resamples=37, seed=3)
    rows = np.arange(10, 10 + count)
    blocks = list(draws(count, "plan=pro", seed=3, resamples=37))
    assert (
        rows[np.concatenate(blocks)].tolist()
        == bootstrap_indices(rows, "plan=pro", config).tolist()
    )


def test_index_blocks_stream_the_index_matrix_in_bounded_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shipyard.analysis.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "BLOCK_CELLS", 5_000)  # 5 resamples of 1,000 rows a block
    config = BootstrapConfig(resamples=23, seed=5)
    rows = np.arange(3, 1003)
    blocks = list(index_blocks(rows, "overall", config))
    assert [len(b) for b in blocks] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.concatenate(blocks), bootstrap_indices(rows, "overall", config))


@pytest.mark.parametrize("fixture", ["cancer", "iris"])
def test_weighted_samples_equal_the_index_matrix_exactly(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    packed: Packed = request.getfixturevalue(fixture)
    cand, base = _predictions(packed, 2), _predictions(packed, 1)
    y = packed.eval["y"].to_numpy()
    for key, rows in (
        ("overall", np.arange(len(y))),
        ("plan=pro", np.flatnonzero(packed.eval["plan"].to_numpy() == "pro")),
    ):
        config = BootstrapConfig(resamples=60, seed=5)
        index = bootstrap_indices(rows, key, config)
        fast = weighted_samples(cand, base, y, rows, key, sorted(WEIGHTED), seed=5, resamples=60)
        assert set(fast) == {*WEIGHTED, FLIP}
        for name in WEIGHTED:
            c, b = per_resample(name, cand, y, index), per_resample(name, base, y, index)
            assert c is not None and b is not None
            np.testing.assert_array_equal(fast[name], c - b, err_msg=f"{key} {name}")
        flipped = (cand.predicted != base.predicted).astype(np.float64)  # type: ignore[operator]
        np.testing.assert_array_equal(fast[FLIP], flipped[index].mean(axis=1))


def test_tied_scores_count_half() -> None:
    """Many equal scores (saturated probabilities): still the index-matrix value."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500), 1).astype(np.float32)
    scores = np.c_[1 - p, p]
    pred = Predictions(
        task="classification", predicted=(p > 0.5).astype(int), scores=scores, classes=[0, 1]
    )
    other = Predictions(
        task="classification", predicted=np.ones(500, int), scores=scores[:, ::-1], classes=[0, 1]
    )
    rows = np.arange(500)
    index = bootstrap_indices(rows, "overall", BootstrapConfig(resamples=30))
    fast = weighted_samples(pred, other, y, rows, "overall", ["roc_auc"], seed=0, resamples=30)
    want = per_resample("roc_auc", pred, y, index) - per_resample("roc_auc", other, y, index)  # type: ignore[operator]
    np.testing.assert_array_equal(fast["roc_auc"], want)


def test_class_codes_match_a_dict_lookup() -> None:
    values = np.array(["a", "b", "zz", "a", None], dtype=object)
    assert class_codes(values, ["a", "b"]).tolist() == [0, 1, 2, 0, 2]
    assert class_codes(np.array([1, 2, 3, 1]), [1, 3]).tolist() == [0, 2, 1, 0]
    assert class_codes(np.array([1.0, 0.0, np.nan]), [0, 1]).tolist() == [1, 0, 2]
