"""The HTML report: self-contained, and rendered by headless Chromium without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shipyard.analysis import EvalConfig, analyze
from shipyard.analysis.report import write_report
from tests.analysis.conftest import Packed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _report(packed: Packed, path: Path, **kwargs: object) -> Path:
    result = analyze(
        packed.model,
        data=packed.csv,
        label="y",
        features=packed.features,
        slices=["plan", "plan×region"],
        config=EvalConfig.model_validate(
            {"analysis": {"min_slice_size": 20}, "thresholds": [{"metric": "accuracy", "min": 0.9}]}
        ),
        **kwargs,  # type: ignore[arg-type]
    )
    return write_report(result, path)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_report_is_self_contained(cancer: Packed, tmp_path: Path) -> None:
    text = _report(cancer, tmp_path / "r.html", baseline=1).read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=['\"]https?:", text), "nothing may be fetched"
    # confusion, calibration, ROC, PR, slices, and the versions' size/accuracy frontier
    assert text.count("data:image/png;base64,") == 6
    assert "Versions: size / latency / accuracy" in text
    for heading in ("Overall", "Against baseline v1", "Slices", "Versions", "Validation"):
        assert f"<h2>{heading}" in text
    assert "plan=pro×region=eu" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (make chromium)")
@pytest.mark.parametrize("fixture", ["cancer", "iris", "diabetes"])
def test_report_renders_in_chromium_without_console_errors(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    packed: Packed = request.getfixturevalue(fixture)
    report = _report(packed, tmp_path / "r.html", baseline=1)
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h2>Overall</h2>" in dom.stdout and "<h2>Versions</h2>" in dom.stdout
    console = [
        line
        for line in dom.stderr.splitlines()
        if "CONSOLE" in line or (":ERROR:" in line and "file://" in line)
    ]
    assert console == [], console
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 10_000
