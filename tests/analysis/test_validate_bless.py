"""Thresholds per slice, blessing written into the manifest (digest still verifies), the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import shipyard
from shipyard.analysis import EvalConfig, analyze
from shipyard.analysis.bless import bless
from shipyard.cli import main
from shipyard.errors import UsageError
from shipyard.package.store import read_verified
from tests.analysis.conftest import Packed

CONFIG = """
[analysis]
slices = ["plan"]
min_slice_size = 20

[bootstrap]
resamples = 200

[[thresholds]]
metric = "accuracy"
min = 0.5

[[thresholds]]
metric = "accuracy"
slice = "{slice}"
min = {slice_min}
max_drop = 0.5
"""


def _config(tmp: Path, slice_key: str, slice_min: float) -> Path:
    path = tmp / "eval.toml"
    path.write_text(CONFIG.format(slice=slice_key, slice_min=slice_min), encoding="utf-8")
    return path


def _copy(packed: Packed, tmp: Path) -> Path:
    target = tmp / "models" / "cancer"
    shutil.copytree(packed.model, target)
    return target


def test_breach_on_one_slice_fails_naming_the_slice(cancer: Packed, tmp_path: Path) -> None:
    from shipyard.analysis import read_config

    config, _ = read_config(_config(tmp_path, "plan=pro", 0.999))
    r = analyze(
        cancer.model,
        data=cancer.csv,
        label="y",
        features=cancer.features,
        baseline=1,
        config=config,
    )
    pro = next(s for s in r.slices if s.key == "plan=pro")
    assert r.validation is not None and not r.validation.ok
    (failure,) = r.validation.failures
    assert failure.slice == "plan=pro" and failure.check == "min"
    assert failure.value == pro.metrics["accuracy"] < 0.999
    assert "slice plan=pro: accuracy" in failure.message and "below min 0.999" in failure.message


def test_missing_slice_and_no_baseline_are_not_ok(cancer: Packed, tmp_path: Path) -> None:
    from shipyard.analysis import read_config

    config, _ = read_config(_config(tmp_path, "plan=enterprise", 0.1))
    r = analyze(cancer.model, data=cancer.csv, label="y", features=cancer.features, config=config)
    assert r.validation is not None and not r.validation.ok
    assert r.validation.missing_slices == ["plan=enterprise"]
    config, _ = read_config(_config(tmp_path, "plan=pro", 0.1))
    r = analyze(cancer.model, data=cancer.csv, label="y", features=cancer.features, config=config)
    assert r.validation is not None and r.validation.no_baseline and not r.validation.ok
    assert "no baseline" in " ".join(r.validation.summary())


def test_change_threshold_fails_with_the_numbers(cancer: Packed) -> None:
    config = EvalConfig.model_validate({"thresholds": [{"metric": "accuracy", "max_drop": 0.0}]})
    acc = {
        v: analyze(
            cancer.model, version=v, data=cancer.csv, label="y", features=cancer.features
        ).overall["accuracy"]
        for v in (1, 2)
    }
    weaker, stronger = sorted(acc, key=lambda v: acc[v])
    assert acc[weaker] < acc[stronger]
    r = analyze(
        cancer.model,
        version=weaker,
        data=cancer.csv,
        label="y",
        features=cancer.features,
        baseline=stronger,
        config=config,
    )
    assert r.validation is not None and not r.validation.ok
    (failure,) = r.validation.failures
    assert failure.check == "max_drop" and failure.slice == "overall"
    assert failure.value == pytest.approx(acc[stronger] - acc[weaker], abs=1e-15)
    assert f"vs baseline v{stronger}" in failure.message


def test_bless_records_the_verdict_and_the_package_still_loads(
    cancer: Packed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _copy(cancer, tmp_path)
    config = _config(tmp_path, "plan=pro", 0.5)
    done = bless(
        model / "2", config=config, data=cancer.csv, label="y", baseline=1, features=cancer.features
    )
    assert done.blessing.ok and done.signature == "none"
    manifest = read_verified(model / "2")  # digest and every hash still check
    assert manifest.blessing == done.blessing
    assert manifest.blessing.data_rows == 269 and manifest.blessing.baseline_version == 1
    loaded = shipyard.load(model / "2")
    loaded.close()
    assert main(["inspect", str(model / "2")]) == 0
    text = capsys.readouterr().out
    assert "blessing: blessed vs v1 on 269 rows" in text
    # A failing config records the verdict too, and the CLI exits 1.
    strict = _config(tmp_path, "plan=pro", 0.9999)
    code = main(
        [
            "bless",
            str(model / "2"),
            "--config",
            str(strict),
            "--data",
            str(cancer.csv),
            "--label",
            "y",
            "--baseline",
            "1",
            "--json",
            *[a for f in cancer.features for a in ("--feature", f)],
        ]
    )
    assert code == 1
    record = json.loads(capsys.readouterr().out)
    assert record["blessing"]["ok"] is False
    assert any("plan=pro" in f for f in record["blessing"]["failures"])
    assert read_verified(model / "2").blessing.ok is False  # type: ignore[union-attr]


def test_bless_refuses_a_signed_version_unless_told(cancer: Packed, tmp_path: Path) -> None:
    from shipyard.security.keys import init_keys

    model = _copy(cancer, tmp_path)
    keys = init_keys(tmp_path / "keys")
    private, public = keys.signing_key, keys.public_key
    from shipyard.security.signing import sign_version, verify_version

    sign_version(model / "2", private)
    config = _config(tmp_path, "plan=pro", 0.5)
    with pytest.raises(UsageError, match="--resign KEY"):
        bless(
            model / "2",
            config=config,
            data=cancer.csv,
            label="y",
            baseline=1,
            features=cancer.features,
        )
    done = bless(
        model / "2",
        config=config,
        data=cancer.csv,
        label="y",
        baseline=1,
        features=cancer.features,
        resign_key=private,
    )
    assert done.signature == "re-signed"
    verify_version(model / "2", public)
    shipyard.load(model / "2", public_key=public).close()


def test_analyze_cli_json_report_and_exit_codes(cancer: Packed, tmp_path: Path) -> None:
    config = _config(tmp_path, "plan=pro", 0.5)
    args = [
        "analyze",
        str(cancer.model),
        "--data",
        str(cancer.csv),
        "--label",
        "y",
        "--baseline",
        "1",
        "--slice",
        "plan×region",
        "--config",
        str(config),
        "--json",
        str(tmp_path / "r.json"),
        "--report",
        str(tmp_path / "r.html"),
        *[a for f in cancer.features for a in ("--feature", f)],
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["validation"]["ok"] is True and record["baseline_version"] == 1
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    strict = _config(tmp_path, "plan=pro", 0.9999)
    assert main([*args, "--config", str(strict)]) == 1  # the last --config wins
    bad = ["analyze", str(cancer.model), "--data", str(cancer.csv), "--label", "nope"]
    assert main(bad) == 2


def test_bless_profile_stores_the_evaluated_rows_as_the_reference(
    cancer: Packed, tmp_path: Path
) -> None:
    from shipyard.analysis.data import read_eval_data
    from shipyard.package.profile import build_profile
    from shipyard.package.profile_io import profile_outputs, read_profile

    model = _copy(cancer, tmp_path)
    config = _config(tmp_path, "plan=pro", 0.5)
    args = [
        "bless",
        str(model / "2"),
        "--config",
        str(config),
        "--data",
        str(cancer.csv),
        "--baseline",
        "1",
    ]
    features = [a for f in cancer.features for a in ("--feature", f)]
    assert main([*args, "--label", "y", "--profile", *features]) == 0
    manifest = read_verified(model / "2")
    assert manifest.blessing is not None and manifest.blessing.ok
    assert manifest.profile is not None and manifest.profile.rows == 269
    ref = manifest.profile
    stored = read_profile(model / "2", ref, manifest.files[ref.file].sha256)
    # Exactly the model inputs the evaluation ran on: no label, no slice column.
    tensors = {f.tensor for f in stored.features if f.source == "input"}
    assert tensors == {s.name for s in manifest.inputs}
    assert not {"y", "plan", "region"} & {f.name for f in stored.features}
    loaded = shipyard.load(model / "2")
    try:
        rows = read_eval_data(cancer.csv, loaded.inputs, label="y", features=cancer.features)
        expected = build_profile(
            manifest.inputs,
            rows.inputs,
            outputs=manifest.outputs,
            output_data=profile_outputs(loaded.infer, loaded.inputs, rows.inputs),
        )
    finally:
        loaded.close()
    assert stored.features == expected.features
    assert manifest.lineage.steps[-1].op == "profile"
    # A later bless without --profile keeps the profile; the package still verifies.
    assert main([*args, "--label", "y", *features]) == 0
    assert read_verified(model / "2").profile == manifest.profile
