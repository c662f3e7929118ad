"""Reference profiles: features, round trip, merge, packing, adding to a version, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.serving.conftest import scale_graph

import shipyard
from shipyard.cli import main
from shipyard.errors import IntegrityError, UsageError
from shipyard.package.manifest import read_manifest
from shipyard.package.profile import PROFILE_FILE, Profile, bin_counts, build_profile
from shipyard.package.profile_io import add_profile, read_data
from shipyard.package.store import read_verified
from shipyard.package.tensorspec import TensorSpec

X = TensorSpec(name="x", dtype="float32", shape=(-1, 4))


def _normal(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def test_table_columns_get_quantile_bins_and_round_trip() -> None:
    profile = build_profile([X], {"x": _normal(1000)}, bins=10)
    assert [f.name for f in profile.features] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    for feature in profile.features:
        assert len(feature.edges) == 9 and len(feature.counts) == 10
        assert sum(feature.counts) == 1000
        assert max(feature.counts) - min(feature.counts) <= 2  # deciles: equal shares
    assert Profile.model_validate_json(profile.to_json()) == profile


def test_merge_equals_profile_of_concatenated_data() -> None:
    reference = build_profile([X], {"x": _normal(500)})
    a, b = _normal(300, seed=1), _normal(200, seed=2) + 0.5
    a[0, 1] = np.nan
    merged = reference.empty().count({"x": a}).merge(reference.empty().count({"x": b}))
    joined = reference.empty().count({"x": np.concatenate([a, b])})
    assert merged.rows == joined.rows == 500
    for m, j in zip(merged.features, joined.features, strict=True):
        assert m.counts == j.counts and m.missing == j.missing
        assert m.sum == pytest.approx(j.sum) and m.sum_sq == pytest.approx(j.sum_sq)
    assert merged.features[1].missing == 1
    # and the reference itself merges with data counted on its edges
    total = reference.merge(reference.empty().count({"x": b}))
    assert total.features[0].counts == reference.count({"x": b}).features[0].counts


def test_merge_refuses_different_edges() -> None:
    with pytest.raises(UsageError, match="cannot be merged"):
        build_profile([X], {"x": _normal(100)}).merge(build_profile([X], {"x": _normal(100, 3)}))


def test_reductions_for_images_tokens_embeddings_strings_and_outputs() -> None:
    rows = 50
    rng = np.random.default_rng(0)
    specs = [
        TensorSpec(name="pixels", dtype="float32", shape=(-1, 3, 8, 8)),
        TensorSpec(name="input_ids", dtype="int64", shape=(-1, -1)),
        TensorSpec(name="emb", dtype="float32", shape=(-1, 384)),
        TensorSpec(name="colour", dtype="str", shape=(-1, 1)),
        TensorSpec(name="fixed", dtype="float32", shape=(2, 2)),
    ]
    ids = rng.integers(1, 1000, size=(rows, 128))
    ids[:, 100:] = 0  # padding
    data = {
        "pixels": rng.random((rows, 3, 8, 8), dtype=np.float32),
        "input_ids": ids,
        "emb": rng.normal(size=(rows, 384)).astype(np.float32),
        "colour": np.array([["red"], ["blue"], ["red"], ["green"], ["red"]] * 10),
        "fixed": np.zeros((2, 2), np.float32),
    }
    outputs = [TensorSpec(name="label", dtype="int64", shape=(-1,))]
    profile = build_profile(
        specs, data, outputs=outputs, output_data={"label": np.arange(rows) % 2}, top_k=2
    )
    names = [f.name for f in profile.features]
    assert names == [
        "pixels:mean[0]",
        "pixels:mean[1]",
        "pixels:mean[2]",
        "pixels:std",
        "input_ids:nonzero",
        "emb:mean",
        "emb:std",
        "colour",
        "label",
    ]
    assert "no batch dimension" in profile.skipped["fixed"]
    colour = profile.features[7]
    assert colour.values == ["blue", "red"] and colour.counts == [10, 30, 10]  # green: other
    tokens = profile.features[4]
    assert tokens.edges[0] == 100.0 and tokens.counts == [0, rows, 0]  # one value, one bin
    label = profile.features[8]
    assert label.counts == [0, 25, 25, 0]  # each label its own bin, empty tails
    unseen, _ = bin_counts(label, np.array([7, 7, 0]))
    assert unseen.tolist() == [0, 1, 0, 2]  # a label never seen lands in the empty tail


def test_pack_with_reference_data_stores_a_hashed_profile(tmp_path: Path) -> None:
    data = {"x": _normal(400)}
    result = shipyard.pack(scale_graph(), name="scale", repo=tmp_path, reference_data=data)
    manifest = read_verified(result.path)
    assert manifest.profile is not None and manifest.profile.rows == 400
    assert PROFILE_FILE in manifest.files
    profile = Profile.model_validate_json((result.path / PROFILE_FILE).read_bytes())
    names = [f.name for f in profile.features]
    assert names[:4] == ["x[0]", "x[1]", "x[2]", "x[3]"] and "s" in names and "y[3]" in names
    assert all(f.source == "output" for f in profile.features[4:])


def test_manifest_without_profile_keeps_its_digest(tmp_path: Path) -> None:
    result = shipyard.pack(scale_graph(), name="scale", repo=tmp_path)
    raw = json.loads((result.path / "manifest.json").read_text())
    assert "profile" not in raw
    assert read_manifest(result.path).digest == raw["digest"]


def test_tampered_profile_is_refused_at_load(tmp_path: Path) -> None:
    result = shipyard.pack(
        scale_graph(), name="scale", repo=tmp_path, reference_data={"x": _normal(50)}
    )
    path = result.path / PROFILE_FILE
    doc = json.loads(path.read_text())
    doc["features"][0]["counts"][0] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"reference\.json.*(size|sha256)"):
        shipyard.load(result.path)


def test_add_profile_to_an_existing_version_from_csv(tmp_path: Path) -> None:
    version = shipyard.pack(scale_graph(), name="scale", repo=tmp_path / "repo").path
    csv = tmp_path / "train.csv"
    rows = _normal(120)
    csv.write_text("a,b,c,d\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    assert read_data(csv, [X])["x"].shape == (120, 4)
    _, profile = add_profile(version, csv)
    manifest = read_verified(version)  # re-sealed, every hash still checks
    assert manifest.profile is not None and manifest.profile.features == len(profile.features)
    assert manifest.lineage.steps[-1].op == "profile"
    with pytest.raises(UsageError, match="already has a reference profile"):
        add_profile(version, csv)
    assert shipyard.load(version).manifest.profile is not None


def test_profile_cli_and_signed_version_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = shipyard.pack(scale_graph(), name="scale", repo=tmp_path / "repo").path
    npz = tmp_path / "ref.npz"
    np.savez(npz, x=_normal(64))
    assert main(["profile", str(version), "--data", str(npz), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 64
    (version / "model.sig").write_text("{}")
    assert main(["profile", str(version), "--data", str(npz), "--replace"]) == 2
    assert "is signed" in capsys.readouterr().err
    onnx_file = tmp_path / "scale.onnx"
    onnx_file.write_bytes(scale_graph().SerializeToString())
    repo = tmp_path / "repo"
    assert (
        main(
            [
                "pack",
                str(onnx_file),
                "--name",
                "s",
                "--repo",
                str(repo),
                "--reference-data",
                str(npz),
            ]
        )
        == 0
    )
    assert read_verified(repo / "s" / "1").profile is not None
    bad = tmp_path / "ref.txt"
    bad.write_text("1")
    (version / "model.sig").unlink()
    assert main(["profile", str(version), "--data", str(bad), "--replace"]) == 2
    assert ".npz, .npy, .csv or .parquet" in capsys.readouterr().err
