"""Rollouts and failover against a real server: the split, the gate, the decisions, the evidence.

Two iris classifiers serve side by side: version 1 (stable) and a candidate that is either
the same estimator refitted (healthy: it agrees), one fitted on shuffled labels (it
disagrees on about two rows in three), one whose runtime fails, or one whose files are
corrupt. Clients are real httpx clients on 127.0.0.1; which version answered is read from
each response's `model_version`, decisions from `GET /v2/models/iris/rollout`, the metrics
and the audit log.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

import shipyard
from shipyard.security.audit_chain import verify_log
from shipyard.security.keys import init_keys, read_secret
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from tests.serving.test_acceptance import wait_for, write_model_toml

pytestmark = pytest.mark.timeout(120)

Data = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def data() -> Data:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


def fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(x, y)


def make_repo(root: Path, data: Data, candidate: str, toml: str) -> Path:
    """iris v1 (stable) and v2: "same" (refitted alike), "shuffled" labels, or "corrupt"."""
    x, y = data
    repo = root / "models"
    shipyard.pack(fit(x, y), name="iris", repo=repo, sample_input=x[:8])
    labels = np.random.default_rng(0).permutation(y) if candidate == "shuffled" else y
    shipyard.pack(fit(x, labels), name="iris", repo=repo, sample_input=x[:8])
    if candidate == "corrupt":
        model = repo / "iris" / "2" / "model.onnx"
        raw = bytearray(model.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        model.write_bytes(bytes(raw))
    write_model_toml(repo / "iris", toml)
    return repo


@contextmanager
def serving(repo: Path, tmp: Path) -> Iterator[tuple[RunningServer, httpx.Client, Path]]:
    keys = init_keys(tmp / "keys")
    audit = tmp / "audit.jsonl"
    settings = load_settings(
        repository=repo,
        port=0,
        poll_interval_s=0,
        audit_log=audit,
        audit_key_file=keys.audit_key,
    )
    with (
        start_in_thread(settings=settings) as running,
        httpx.Client(base_url=running.url, timeout=10) as client,
    ):
        yield running, client, audit
    assert verify_log(audit, read_secret(keys.audit_key)).ok


def body(row: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()},
        ],
        "outputs": [{"name": "label"}],
    }


def infer(client: httpx.Client, row: np.ndarray, **headers: str) -> httpx.Response:
    return client.post("/v2/models/iris/infer", json=body(row), headers=headers)


def answered_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def rollout(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v2/models/iris/rollout")
    assert response.status_code == 200, response.text
    return dict(response.json())


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def audit_records(path: Path, event: str) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


CANARY = """[rollout]
candidate = 2
mode = "canary"
percent = {percent}
{extra}
[rollout.gate]
min_requests = {min_requests}
max_p99_ratio = 100
{gate}
"""


def canary(percent: float, min_requests: int, extra: str = "", gate: str = "") -> str:
    return CANARY.format(percent=percent, min_requests=min_requests, extra=extra, gate=gate)


def test_canary_split_is_binomial_and_sticky(tmp_path: Path, data: Data) -> None:
    toml = canary(10, 1_000_000, extra='sticky_header = "X-User"')
    repo = make_repo(tmp_path, data, "same", toml)
    x = data[0]
    with serving(repo, tmp_path) as (_, client, _audit):
        assert rollout(client)["phase"] == "canary"
        n = 1200
        versions = Counter(answered_by(infer(client, x[i % len(x)])) for i in range(n))
        # 10 % of 1,200: mean 120, sd 10.4; 4 sd either side
        sd = math.sqrt(n * 0.1 * 0.9)
        assert abs(versions["2"] - 120) < 4 * sd, versions
        assert versions["1"] + versions["2"] == n
        # one user stays on one version; over many users the share is still about 10 %
        per_user = {}
        for user in range(400):
            seen = {answered_by(infer(client, x[0], **{"X-User": f"u{user}"})) for _ in range(3)}
            assert len(seen) == 1, f"user u{user} saw versions {seen}"
            per_user[user] = seen.pop()
        share = sum(v == "2" for v in per_user.values()) / len(per_user)
        assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 400), share
        status = rollout(client)
        assert status["evidence"]["candidate"]["requests"] == versions["2"] + sum(
            3 for v in per_user.values() if v == "2"
        )
        assert status["decision"] is None


def test_disagreeing_candidate_is_rolled_back_within_the_gate_window(
    tmp_path: Path, data: Data
) -> None:
    toml = canary(20, 200, gate="min_agreement = 0.95")
    repo = make_repo(tmp_path, data, "shuffled", toml)
    x = data[0]
    with serving(repo, tmp_path) as (running, client, audit):
        candidate_answers = 0
        sent = 0
        while rollout(client)["phase"] == "canary":
            assert sent < 2000, "no decision after 2,000 requests"
            candidate_answers += answered_by(infer(client, x[sent % len(x)])) == "2"
            sent += 1
        assert candidate_answers <= 200, "the candidate took more than the gate window"
        status = rollout(client)
        assert status["phase"] == "rolled_back"
        decision = status["decision"]
        assert (decision["action"], decision["trigger"]) == ("rollback", "gate")
        assert "agrees with stable" in decision["reason"]
        assert decision["evidence"]["agreement"] < 0.95
        # clients see only stable answers from now on, and the candidate is unloaded
        after = Counter(answered_by(infer(client, x[i % len(x)])) for i in range(300))
        assert after == {"1": 300}
        wait_for(lambda: running.server.dataplane.manager.served_versions("iris") == [1], "unload")
        index = client.post("/v2/repository/index").json()
        v2 = next(e for e in index if e.get("version") == "2")
        assert v2["state"] == "UNAVAILABLE" and v2["reason"].startswith("rolled back:")
        assert (
            metric(client, "shipyard_rollout_decisions_total", action="rollback", trigger="gate")
            == 1
        )
    records = audit_records(audit, "model.rollout")
    assert [(r["version"], r["outcome"]) for r in records] == [(2, "rollback")]
    assert json.loads(records[0]["detail"])["agreement"] < 0.95


def test_shadow_answers_from_stable_and_reports_agreement(tmp_path: Path, data: Data) -> None:
    toml = """[rollout]
candidate = 2
mode = "shadow"
percent = 100
[rollout.gate]
min_requests = 1000000
"""
    repo = make_repo(tmp_path, data, "shuffled", toml)
    x = data[0]
    n = 3 * len(x)
    with serving(repo, tmp_path) as (_running, client, _audit):
        versions = Counter(answered_by(infer(client, x[i % len(x)])) for i in range(n))
        assert versions == {"1": n}, "shadow must never answer from the candidate"
        wait_for(lambda: rollout(client)["evidence"]["compared_requests"] == n, "compared")
        evidence = rollout(client)["evidence"]
        assert evidence["candidate"]["requests"] == n  # the mirrored calls
        assert evidence["mirrors_skipped"] == 0
        # the shuffled-label candidate agrees on about a third of the rows
        stable = fit(*data).predict(x)
        shuffled = fit(x, np.random.default_rng(0).permutation(data[1])).predict(x)
        expected = float(np.mean(stable == shuffled))
        assert evidence["agreement"] == pytest.approx(expected, abs=1e-6), (evidence, expected)
        assert evidence["flip_rate"] == pytest.approx(1 - evidence["agreement"], abs=1e-6)
        mirrored = metric(client, "shipyard_requests_total", version="2", protocol="mirror")
        assert mirrored == n
        assert rollout(client)["phase"] == "shadow"


def test_healthy_candidate_is_promoted(tmp_path: Path, data: Data) -> None:
    toml = canary(50, 100, gate="min_agreement = 0.99")
    repo = make_repo(tmp_path, data, "same", toml)
    x = data[0]
    with serving(repo, tmp_path) as (running, client, audit):
        sent = 0
        while rollout(client)["phase"] == "canary":
            assert sent < 2000, "no decision after 2,000 requests"
            answered_by(infer(client, x[sent % len(x)]))
            sent += 1
        status = rollout(client)
        assert status["phase"] == "promoted", status
        assert status["decision"]["evidence"]["agreement"] == 1.0
        assert status["serving_version"] == "2"
        after = Counter(answered_by(infer(client, x[i % len(x)])) for i in range(100))
        assert after == {"2": 100}
        wait_for(lambda: running.server.dataplane.manager.served_versions("iris") == [2], "unload")
    records = audit_records(audit, "model.rollout")
    assert [(r["version"], r["outcome"]) for r in records] == [(2, "promote")]


def test_failing_candidate_takes_only_its_share_then_is_rolled_back(
    tmp_path: Path, data: Data
) -> None:
    toml = canary(10, 500)
    repo = make_repo(tmp_path, data, "same", toml)
    x = data[0]
    with serving(repo, tmp_path) as (running, client, _audit):
        candidate = running.server.dataplane.manager.get("iris", 2)

        def broken(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

        candidate.batcher._run = broken  # the candidate's runtime fails from now on
        statuses: Counter[int] = Counter()
        sent = 0
        while rollout(client)["phase"] == "canary":
            assert sent < 3000, "no decision after 3,000 requests"
            statuses[infer(client, x[sent % len(x)]).status_code] += 1
            sent += 1
        decision = rollout(client)["decision"]
        assert (decision["action"], decision["trigger"]) == ("rollback", "gate")
        assert "error rate" in decision["reason"]
        assert set(statuses) <= {200, 500}
        assert statuses[500] <= 30, statuses  # about 20 failures decide it; none after
        assert all(infer(client, x[i]).status_code == 200 for i in range(100))


def test_candidate_that_fails_to_load_never_takes_traffic(tmp_path: Path, data: Data) -> None:
    repo = make_repo(tmp_path, data, "corrupt", canary(50, 100))
    x = data[0]
    with serving(repo, tmp_path) as (_, client, audit):
        status = rollout(client)
        assert status["phase"] == "rolled_back"
        assert status["decision"]["trigger"] == "load_failure"
        assert Counter(answered_by(infer(client, x[i])) for i in range(100)) == {"1": 100}
    assert [r["outcome"] for r in audit_records(audit, "model.rollout")] == ["rollback"]


def test_unblessed_candidate_is_refused_when_the_gate_requires_a_blessing(
    tmp_path: Path, data: Data
) -> None:
    repo = make_repo(tmp_path, data, "same", canary(50, 100, gate="require_blessing = true"))
    with serving(repo, tmp_path) as (_, client, _audit):
        decision = rollout(client)["decision"]
        assert decision["trigger"] == "not_blessed" and "blessing" in decision["reason"]
        x = data[0]
        assert Counter(answered_by(infer(client, x[i])) for i in range(50)) == {"1": 50}


def test_manual_promote_and_rollback(tmp_path: Path, data: Data) -> None:
    repo = make_repo(tmp_path, data, "same", canary(10, 1_000_000))
    x = data[0]
    with serving(repo, tmp_path) as (_running, client, audit):
        promoted = client.post("/v2/models/iris/rollout/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["phase"] == "promoted"
        assert Counter(answered_by(infer(client, x[i])) for i in range(30)) == {"2": 30}
        again = client.post("/v2/models/iris/rollout/promote")
        assert again.status_code == 409 and "already promoted" in again.json()["error"]
        back = client.post("/v2/models/iris/rollout/rollback")
        assert back.status_code == 200 and back.json()["phase"] == "rolled_back"
        assert Counter(answered_by(infer(client, x[i])) for i in range(30)) == {"1": 30}
        none = client.get("/v2/models/nope/rollout")
        assert none.status_code == 404
    records = audit_records(audit, "model.rollout")
    assert [r["outcome"] for r in records] == ["promote", "rollback"]
    assert all(json.loads(r["detail"])["trigger"] == "manual" for r in records)


def test_failover_to_the_last_good_version(tmp_path: Path, data: Data) -> None:
    toml = """[failover]
window_requests = 10
max_error_rate = 0.5
window_s = 60
"""
    repo = make_repo(tmp_path, data, "same", toml)
    x = data[0]
    with serving(repo, tmp_path) as (running, client, audit):
        manager = running.server.dataplane.manager
        assert manager.served_versions("iris") == [1, 2]  # version 1 is the standby
        assert answered_by(infer(client, x[0])) == "2"

        def broken(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

        manager.get("iris", 2).batcher._run = broken
        codes = [infer(client, x[i]).status_code for i in range(40)]
        assert codes[:9] == [500] * 9  # judged once 10 requests are in the window
        failed = codes.index(200)
        assert failed <= 10 and set(codes[failed:]) == {200}, codes
        assert Counter(answered_by(infer(client, x[i])) for i in range(50)) == {"1": 50}
        index = client.post("/v2/repository/index").json()
        v2 = next(e for e in index if e.get("version") == "2")
        assert v2["state"] == "READY" and "failed over to version 1" in v2["reason"]
        assert metric(client, "shipyard_failovers_total", from_version="2", to_version="1") == 1
        # version 2 still answers requests that name it (and fails them)
        named = client.post("/v2/models/iris/versions/2/infer", json=body(x[0]))
        assert named.status_code == 500
    assert [r["version"] for r in audit_records(audit, "model.failover")] == [2]


def test_cli_status_promote_and_refusals(
    tmp_path: Path, data: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.cli.app import main

    repo = make_repo(tmp_path, data, "same", canary(10, 1_000_000))
    with serving(repo, tmp_path) as (running, client, _audit):
        for i in range(20):
            answered_by(infer(client, data[0][i]))
        url = running.url
        assert main(["rollout", "status", str(repo / "iris"), "--url", url]) == 0
        shown = capsys.readouterr().out
        assert "iris: canary (canary at 10%), stable 1, candidate 2, answering 1" in shown
        assert main(["rollout", "promote", "iris", "--url", url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["phase"] == "promoted"
        assert main(["rollout", "promote", "iris", "--url", url]) == 1
        assert "HTTP 409: the rollout of 'iris' is already promoted" in capsys.readouterr().err
        assert main(["rollout", "status", "nope", "--url", url]) == 1
        assert "HTTP 404" in capsys.readouterr().err


def test_grpc_and_tf_serving_requests_follow_the_rollout(tmp_path: Path, data: Data) -> None:
    """A sticky canary routes V2 gRPC calls by their metadata and TF Serving REST by header."""
    import tritonclient.grpc as triton_grpc

    toml = canary(50, 1_000_000, extra='sticky_header = "X-User"')
    repo = make_repo(tmp_path, data, "same", toml)
    keys = init_keys(tmp_path / "keys")
    settings = load_settings(
        repository=repo,
        port=0,
        grpc_port=0,
        poll_interval_s=0,
        audit_log=tmp_path / "audit.jsonl",
        audit_key_file=keys.audit_key,
    )
    x = data[0][:1]
    with start_in_thread(settings=settings) as running:
        grpc_port = running.server.grpc_port
        assert grpc_port
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            feed = triton_grpc.InferInput("X", list(x.shape), "FP32")
            feed.set_data_from_numpy(x)
            by_user: dict[str, set[str]] = {}
            for user in range(40):
                for _ in range(3):
                    result = client.infer("iris", [feed], headers={"x-user": f"u{user}"})
                    version = result.get_response().model_version
                    by_user.setdefault(f"u{user}", set()).add(version)
        finally:
            client.close()
        assert all(len(v) == 1 for v in by_user.values()), by_user
        assert {v for s in by_user.values() for v in s} == {"1", "2"}
        with httpx.Client(base_url=running.url, timeout=10) as http:
            tf = {
                user: {
                    http.post(
                        "/v1/models/iris:predict",
                        json={"instances": x.tolist()},
                        headers={"X-User": user},
                    ).status_code
                    for _ in range(2)
                }
                for user in by_user
            }
            assert all(codes == {200} for codes in tf.values())
            evidence = rollout(http)["evidence"]
        # every gRPC and TF Serving request was rollout traffic, counted on one side or the other
        assert evidence["stable"]["requests"] + evidence["candidate"]["requests"] == 40 * 5
