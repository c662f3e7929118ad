"""The Grafana dashboard's structure, and `shipyard monitoring export` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipyard.cli import main
from shipyard.monitoring import MonitoringConfig, dashboard


def _panels(board: dict[str, object]) -> list[dict[str, object]]:
    return [p for p in board["panels"] if p["type"] != "row"]  # type: ignore[attr-defined,index]


def test_dashboard_structure() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["__inputs"][0]["name"] == "DS_PROMETHEUS"
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["DS_PROMETHEUS", "model", "version"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    for panel in _panels(board):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert 'job="shipyard"' in target["expr"], target["expr"]


def test_dashboard_has_the_panels_operators_ask_for() -> None:
    titles = " | ".join(p["title"] for p in _panels(dashboard())).lower()
    for wanted in (
        "request rate",
        "error rate",
        "latency p50 / p99",
        "queue time",
        "compute time",
        "batch size",
        "queue depth",
        "versions loaded",
        "load failures",
        "unavailable versions",
        "auth failures",
        "audit",
        "drift",
        "worker restarts",
    ):
        assert wanted in titles, wanted
    exprs = [t["expr"] for p in _panels(dashboard()) for t in p["targets"]]
    assert any(e.startswith("histogram_quantile(0.99") and "request_duration" in e for e in exprs)
    assert all('model=~"$model"' in e for e in exprs if "shipyard_requests_total" in e)


def test_export_cli_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "monitoring"
    code = main(["monitoring", "export", "--out", str(out), "--job", "edge", "--p99-ms", "40",
                 "--error-rate", "0.01", "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    board = json.loads(Path(summary["dashboard"]).read_text(encoding="utf-8"))
    assert board["title"] == "Shipyard serving (edge)"
    text = Path(summary["rules"]).read_text(encoding="utf-8")
    assert 'job=\\"edge\\"' in text and "> 0.04" in text and "> 0.01" in text
    assert summary["alerts"] == text.count("- alert: ")


def test_export_cli_rejects_a_bad_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["monitoring", "export", "--out", str(tmp_path), "--error-rate", "3"])
    assert code == 2
    assert "error_rate" in capsys.readouterr().err


def test_a_custom_job_reaches_every_query() -> None:
    board = dashboard(MonitoringConfig(job="edge"))
    assert all('job="edge"' in t["expr"] for p in _panels(board) for t in p["targets"])
