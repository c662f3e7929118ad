"""The alert rules: promtool accepts them, and fixture series fire and spare each alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shipyard.monitoring import MonitoringConfig, alerts, export, rules

FIXTURE = Path(__file__).with_name("rules_test.yml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (`make promtool`, or apt-get install prometheus)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_each_alert_has_for_severity_and_annotations() -> None:
    found = alerts()
    assert len({a.name for a in found}) == len(found)
    for rule in rules()["groups"][0]["rules"]:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        notes = rule["annotations"]
        assert "{{ $labels." in notes["summary"], rule["alert"]
        assert "Runbook: " in notes["description"], rule["alert"]
        grouped = re.search(r"by \(([^)]*)\)", rule["expr"])
        if grouped and "model" in grouped.group(1):  # per model: the summary names it
            assert "$labels.model" in notes["summary"], rule["alert"]


def test_thresholds_and_job_come_from_the_config() -> None:
    by_name = {a.name: a for a in alerts(MonitoringConfig(job="prod", p99_ms=80, error_rate=0.2))}
    assert by_name["ShipyardHighP99Latency"].expr.endswith("> 0.08")
    assert by_name["ShipyardHighErrorRate"].expr.endswith("> 0.2")
    assert all('job="prod"' in a.expr for a in by_name.values())


@needs_promtool
def test_promtool_checks_the_exported_rules(tmp_path: Path) -> None:
    exported = export(tmp_path)
    result = _promtool("check", "rules", exported.rules.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {exported.alerts} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_fire_and_spare_every_alert(tmp_path: Path) -> None:
    export(tmp_path)
    fixture = FIXTURE.read_text(encoding="utf-8")
    for alert in alerts():  # each alert has a quiet and a firing case in the fixture
        assert f"alertname: {alert.name}, exp_alerts: []" in fixture, alert.name
        assert f"alertname: {alert.name}\n" in fixture, alert.name
    shutil.copy(FIXTURE, tmp_path / "tests.yml")
    result = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    # The fixture really depends on the rules: with a laxer p99 threshold iris no longer fires.
    export(tmp_path, MonitoringConfig(p99_ms=1000))
    shutil.copy(FIXTURE, tmp_path / "tests.yml")
    result = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ShipyardHighP99Latency" in result.stdout + result.stderr
