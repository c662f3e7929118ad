"""Drift inside the server: sampled windows, PSI/KS/JS gauges, model.toml, status CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.serving.conftest import scale_graph

import shipyard
from shipyard.cli import main
from shipyard.package.profile import build_profile
from shipyard.package.tensorspec import TensorSpec
from shipyard.serving.drift import DriftTracker, drift_statistics
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import DriftSettings, ServerSettings

pytestmark = pytest.mark.anyio
ROWS = 100  # rows per request
WINDOW = 2000


def _normal(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def _pack_profiled(repo: Path, name: str = "scale") -> Path:
    reference = {"x": _normal(5000, seed=0)}
    return shipyard.pack(scale_graph(), name=name, repo=repo, reference_data=reference).path


def _body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def _gauges(text: str) -> dict[str, dict[tuple[str, str, str], float]]:
    found: dict[str, dict[tuple[str, str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("shipyard_drift_"):
            for s in family.samples:
                key = (s.labels["model"], s.labels["version"], s.labels["feature"])
                found.setdefault(family.name, {})[key] = s.value
    return found


async def _send(client: httpx.AsyncClient, x: np.ndarray, name: str = "scale") -> None:
    for start in range(0, len(x), ROWS):
        r = await client.post(f"/v2/models/{name}/infer", json=_body(x[start : start + ROWS]))
        assert r.status_code == 200, r.text


def test_statistics_of_equal_and_shifted_counts() -> None:
    ref = np.array([100, 100, 100, 100, 0])
    same = drift_statistics(ref, ref * 3, numeric=True)
    assert same is not None and same.psi == pytest.approx(0) and same.ks == pytest.approx(0)
    moved = drift_statistics(ref, np.array([0, 0, 0, 400, 0]), numeric=True)
    assert moved is not None and moved.psi > 1 and moved.ks == pytest.approx(0.75)
    assert 0 < moved.js <= 1
    cat = drift_statistics(ref, ref, numeric=False)
    assert cat is not None and cat.ks is None
    assert drift_statistics(ref, np.zeros(5, dtype=int), numeric=True) is None


def test_window_keeps_only_the_latest_rows() -> None:
    spec = TensorSpec(name="x", dtype="float32", shape=(-1, 4))
    profile = build_profile([spec], {"x": _normal(2000, seed=0)})
    tracker = DriftTracker("m", 1, profile, DriftSettings(enabled=True, sample_rate=1, window=500))
    for _ in range(30):  # 3,000 shifted rows, counted in drains of DRAIN_AT requests
        tracker.observe({"x": _normal(100, seed=1) + 5}, {})
    for seed in range(10):  # then 1,000 in-distribution rows
        tracker.observe({"x": _normal(100, seed=10 + seed)}, {})
    values = dict(tracker.values())
    assert 500 <= values["x[0]"].samples <= 550  # the window, plus the segment filling now
    assert values["x[0]"].psi < 0.1  # the shifted rows have left the window


async def test_drift_gauges_flag_only_the_shifted_feature(
    repo: Path,
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[[ServerSettings], Any],
) -> None:
    _pack_profiled(repo)
    drift = DriftSettings(enabled=True, sample_rate=1.0, window=WINDOW)
    async with app_client(settings_for(repo, drift=drift)) as client:
        await _send(client, _normal(WINDOW, seed=1))
        quiet = _gauges((await client.get("/metrics")).text)
        psi = quiet["shipyard_drift_psi"]
        assert {k[2] for k in psi} >= {"x[0]", "x[1]", "x[2]", "x[3]", "s", "y[2]"}
        assert max(psi.values()) < 0.1, psi
        assert set(quiet["shipyard_drift_samples"].values()) == {WINDOW}  # every row sampled
        assert max(quiet["shipyard_drift_ks"].values()) < 0.1

        shifted = _normal(WINDOW, seed=2)
        shifted[:, 2] += 3.0  # three standard deviations, one feature only
        await _send(client, shifted)
        loud = _gauges((await client.get("/metrics")).text)["shipyard_drift_psi"]
    inputs = {k[2]: v for k, v in loud.items() if k[2].startswith("x[")}
    assert inputs["x[2]"] > 0.25, inputs
    assert all(v < 0.1 for f, v in inputs.items() if f != "x[2]"), inputs
    # the outputs computed from it move with it (y = 2x, s = sum of x); the others do not
    assert loud[("scale", "1", "y[2]")] > 0.25 and loud[("scale", "1", "s")] > 0.25
    assert loud[("scale", "1", "y[0]")] < 0.1


async def test_version_without_profile_has_no_gauges_and_says_why(
    repo: Path,
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[[ServerSettings], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipyard.pack(scale_graph(), name="plain", repo=repo)
    _pack_profiled(repo, name="profiled")
    drift = DriftSettings(enabled=True, sample_rate=1.0, window=100)
    with caplog.at_level(logging.INFO, logger="shipyard.serving.drift"):
        async with app_client(settings_for(repo, drift=drift)) as client:
            await _send(client, _normal(200, seed=3), name="plain")
            await _send(client, _normal(200, seed=3), name="profiled")
            gauges = _gauges((await client.get("/metrics")).text)
    assert {k[0] for k in gauges["shipyard_drift_psi"]} == {"profiled"}
    messages = [r.getMessage() for r in caplog.records if r.name == "shipyard.serving.drift"]
    assert any(
        "drift off for plain version 1: the package has no reference profile" in m for m in messages
    ), messages


async def test_model_toml_turns_drift_on_for_one_model(
    repo: Path,
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[[ServerSettings], Any],
) -> None:
    _pack_profiled(repo, name="on")
    _pack_profiled(repo, name="off")
    (repo / "on" / "model.toml").write_text("[drift]\nenabled = true\nsample_rate = 1.0\n")
    async with app_client(settings_for(repo)) as client:
        await _send(client, _normal(200, seed=4), name="on")
        await _send(client, _normal(200, seed=4), name="off")
        gauges = _gauges((await client.get("/metrics")).text)
    assert {k[0] for k in gauges["shipyard_drift_samples"]} == {"on"}
    assert max(gauges["shipyard_drift_samples"].values()) == 200


def test_drift_status_reads_a_real_server(
    repo: Path, capsys: pytest.CaptureFixture[str], settings_for: Callable[..., ServerSettings]
) -> None:
    _pack_profiled(repo)
    drift = DriftSettings(enabled=True, sample_rate=1.0, window=500)
    server = start_in_thread(settings=settings_for(repo, drift=drift))
    try:
        shifted = _normal(500, seed=5)
        shifted[:, 0] -= 3.0
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for start in range(0, 500, ROWS):
                body = _body(shifted[start : start + ROWS])
                assert client.post("/v2/models/scale/infer", json=body).status_code == 200
        code = main(["drift", "status", "--url", server.url])
        out = capsys.readouterr().out
        assert code == 1 and "DRIFT" in out and "x[0]" in out
        assert (
            main(["drift", "status", "--url", server.url, "--json", "--psi-threshold", "99"]) == 0
        )
    finally:
        server.stop()
    assert main(["drift", "status", "--url", server.url]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_a_failing_count_turns_drift_off_without_failing_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shipyard.serving.drift import DriftMonitor

    spec = TensorSpec(name="x", dtype="float32", shape=(-1, 4))
    profile = build_profile([spec], {"x": _normal(100, seed=0)})
    monitor = DriftMonitor()
    tracker = DriftTracker("m", 1, profile, DriftSettings(enabled=True, sample_rate=1))
    monitor.trackers[("m", 1)] = tracker
    with caplog.at_level(logging.ERROR, logger="shipyard.serving.drift"):
        for _ in range(64):  # the 64th triggers a count, which fails on a 1-column array
            monitor.observe("m", 1, {"x": np.zeros((1, 1), np.float32)}, {})
    assert monitor.trackers == {}
    assert "counting a sample failed" in caplog.text
