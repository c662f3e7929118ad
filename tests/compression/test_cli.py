"""The compress/compare commands: flags → typed configs, exit codes, JSON and HTML output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shipyard.cli import build_parser
from shipyard.cli.compression import config_from_args
from shipyard.compression import (
    AutoConfig,
    DynamicInt8Config,
    Int4WeightOnlyConfig,
    OnnxPruneConfig,
    OptimizeConfig,
    PipelineConfig,
    QuantizeAutoConfig,
    StaticInt8Config,
)
from shipyard.errors import UsageError


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(*argv: str) -> int:
    """The command's handler, run directly: its exceptions reach the test (no exit code)."""
    args = parse(*argv)
    code: int = args.run(args)
    return code


def test_flags_become_typed_configs() -> None:
    assert (
        config_from_args(parse("compress", "m", "--quantize", "int8-dynamic"))
        == DynamicInt8Config()
    )
    per_tensor = config_from_args(
        parse("compress", "m", "--quantize", "int8-dynamic", "--per-tensor")
    )
    assert per_tensor == DynamicInt8Config(per_channel=False)
    static = config_from_args(
        parse(
            "compress",
            "m",
            "--quantize",
            "int8-static",
            "--calibration",
            "c.npz",
            "--calibration-method",
            "entropy",
        )
    )
    assert static == StaticInt8Config(calibration_method="entropy")
    assert config_from_args(parse("compress", "m", "--quantize", "int4", "--block-size", "32")) == (
        Int4WeightOnlyConfig(block_size=32)
    )
    assert config_from_args(parse("compress", "m", "--quantize", "auto")) == QuantizeAutoConfig()
    pipeline = config_from_args(
        parse(
            "compress", "m", "--prune", "0.5", "--quantize", "int8-dynamic", "--optimize", "basic"
        )
    )
    assert pipeline == PipelineConfig(
        steps=(OnnxPruneConfig(sparsity=0.5), DynamicInt8Config(), OptimizeConfig(level="basic"))
    )
    auto = config_from_args(parse("compress", "m", "--auto", "--target", "gpu"))
    assert auto == AutoConfig(target="gpu")


@pytest.mark.parametrize(
    "argv",
    [
        ("compress", "m"),
        ("compress", "m", "--auto", "--quantize", "fp16"),
        ("compress", "m", "--quantize", "auto", "--prune", "0.5"),
        ("compress", "m", "--quantize", "int8-static"),
    ],
)
def test_unusable_flag_combinations(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        config_from_args(parse(*argv))


def test_compress_json_then_compare_html(
    mlp_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fast = ("--batch-size", "8", "--runs", "5")
    code = main(
        "compress",
        str(mlp_repo / "mlp"),
        "--quantize",
        "int8-dynamic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--max-drop",
        "0.05",
        "--json",
        *fast,
    )
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    assert body["accepted"] and body["version"] == 2
    assert body["report"]["fidelity"]["mean_cosine"] > 0.99
    report = tmp_path / "report.html"
    assert main("compare", str(mlp_repo / "mlp"), "1", "2", "--report", str(report), *fast) == 0
    printed = capsys.readouterr().out
    assert "gzip size" in printed and "throughput @8" in printed
    page = report.read_text()
    assert "<table>" in page and "data:image/png;base64," in page


def test_rejected_candidate_exits_1(
    mlp_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        "compress",
        str(mlp_repo / "mlp"),
        "--prune",
        "0.95",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--max-drop",
        "0",
        "--batch-size",
        "8",
        "--runs",
        "5",
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "rejected" in captured.err and ".rejected" in captured.err


def test_prune_without_max_drop_exits_1_under_the_default_budget(
    mlp_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        "compress", str(mlp_repo / "mlp"), "--prune", "0.9", "--batch-size", "8", "--runs", "5"
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "budget: default (top-1 agreement >= 0.99" in captured.err
    assert "rejected" in captured.err and "is below min top-1 agreement 0.99" in captured.err
    assert not (mlp_repo / "mlp" / "2").exists()


def test_no_budget_says_what_it_did(mlp_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        "compress",
        str(mlp_repo / "mlp"),
        "--prune",
        "0.9",
        "--no-budget",
        "--batch-size",
        "8",
        "--runs",
        "5",
    )
    captured = capsys.readouterr()
    assert code == 0 and (mlp_repo / "mlp" / "2").is_dir()
    assert "budget: none (--no-budget): published without" in captured.err
    with pytest.raises(UsageError, match="--no-budget cannot be combined"):
        main("compress", str(mlp_repo / "mlp"), "--prune", "0.9", "--no-budget", "--max-drop", "0")


def test_table_says_how_many_labelled_rows_accuracy_used(
    mlp_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        "compress",
        str(mlp_repo / "mlp"),
        "--optimize",
        "basic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--batch-size",
        "8",
        "--runs",
        "5",
    )
    assert code == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "accuracy" in ln)
    assert "drop +0.0000 on 64 rows" in row


def test_auto_decision_is_recorded_in_the_manifest_and_inspect_shows_it(
    mlp_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.cli import main as shipyard_main
    from shipyard.package.store import read_verified

    code = main("compress", str(mlp_repo / "mlp"), "--auto", "--batch-size", "8", "--runs", "5")
    assert code == 0
    printed = capsys.readouterr().out
    measured = read_verified(mlp_repo / "mlp" / "2").measured
    decision = measured["decision"]
    assert decision.startswith("kept ") and len(measured["candidates"]) >= 2
    assert decision.split(":")[0] in " ".join(printed.split())
    assert shipyard_main(["inspect", str(mlp_repo / "mlp" / "2")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"compress --auto: {' '.join(decision.split())}" in shown


def test_a_single_method_records_no_decision(mlp_repo: Path) -> None:
    from shipyard.package.store import read_verified

    assert main("compress", str(mlp_repo / "mlp"), "--optimize", "basic", "--runs", "5") == 0
    measured = read_verified(mlp_repo / "mlp" / "2").measured
    assert "decision" not in measured and "candidates" not in measured


def test_inspect_shows_what_compression_measured_and_a_model_folder_lists_versions(
    mlp_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both were only in --json: the figures against the parent and the method's config."""
    from shipyard.cli import main as shipyard_main

    model = mlp_repo / "mlp"
    assert (
        main("compress", str(model), "--quantize", "int8-dynamic", "--runs", "5", "--no-budget")
        == 0
    )
    capsys.readouterr()
    assert shipyard_main(["inspect", str(model / "2")]) == 0
    shown = capsys.readouterr().out
    assert "measured against version 1 (budget: " in shown
    assert "gzip size" in shown and "mean / min cosine" in shown  # the table compress printed
    step = next(line for line in shown.splitlines() if line.strip().startswith("quantize ("))
    assert "method=int8-dynamic" in step and "per_channel=true" in step
    assert "versions" not in shown.splitlines()[0]  # a version folder: that version only

    assert shipyard_main(["inspect", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "mlp: 2 version(s)" in shown
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in shown.splitlines()]
    rows = {row[0]: " ".join(row) for row in cells if row and row[0] in ("1", "2")}
    assert "pack" in rows["1"] and "unsigned" in rows["1"]
    assert "pack → quantize" in rows["2"] and "× smaller" in rows["2"]
    assert f"latest version, {model / '2'}:" in shown and "measured against version 1" in shown
