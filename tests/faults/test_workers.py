"""`shipyard serve --workers 2` as a real process group on 127.0.0.1: one port, two workers.

Every request's `X-Shipyard-Worker` header says which worker answered. Checked: new
connections reach both workers; one /metrics and one /v2/models/stats (from either) sum
both, and /metrics never goes back;
a taken port fails loudly; an unload by request reaches every worker; a worker killed with
SIGKILL is started again while the other serves; per-worker audit chains verify together;
keep-alive connections that all landed on one worker spread over both once the other
listens (`http.balance`), without a failed request; SIGTERM drains both and the group
exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from shipyard.security.keys import init_keys
from tests.faults._cli_server import affine_repo, cli, cli_server
from tests.serving.test_acceptance import wait_for

pytestmark = pytest.mark.timeout(120)

X = np.ones((1, 4), dtype=np.float32)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def fresh(url: str, path: str, method: str = "GET", **kw: object) -> httpx.Response:
    """One request on a new connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        return client.request(method, path, **kw)  # type: ignore[arg-type]


def requests_total(url: str) -> float:
    text = fresh(url, "/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "shipyard_requests_total" and s.labels.get("model") == "affine"
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return affine_repo(tmp_path_factory.mktemp("workers") / "models")


def test_both_workers_answer_and_metrics_add_up(repo: Path) -> None:
    with cli_server(repo, "--workers", "2", "--grpc-port", "0") as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        seen: Counter[str] = Counter()
        for _ in range(120):
            response = fresh(server.url, "/v2/models/affine/infer", "POST", json=BODY)
            assert response.status_code == 200, response.text
            seen[response.headers["x-shipyard-worker"]] += 1
        assert set(seen) == {"1", "2"} and min(seen.values()) >= 12, seen
        # one scrape, from either worker, counts every request of both
        totals = [requests_total(server.url) for _ in range(6)]
        assert totals == [120.0] * 6, totals

        def stats_count() -> set[int]:
            docs = [fresh(server.url, "/v2/models/affine/stats").json() for _ in range(8)]
            return {d["model_stats"][0]["inference_stats"]["success"]["count"] for d in docs}

        # Triton's statistics too: each worker adds the others' (written once a second)
        wait_for(lambda: stats_count() == {120}, "statistics summed over the workers")
        # gRPC on the shared port too
        line = server.wait_for_line("(SO_REUSEPORT), gRPC on ")
        grpc_port = int(line.rsplit("gRPC on ", 1)[1].split()[0])
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            feed = triton_grpc.InferInput("x", [1, 4], "FP32")
            feed.set_data_from_numpy(X)
            assert client.infer("affine", [feed]).as_numpy("y").shape == (1, 3)
        finally:
            client.close()
        code = server.stop()
    assert code == 0
    assert any("draining 2 workers" in line for line in server.lines)


def test_a_taken_port_fails_loudly(repo: Path) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing holder
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = subprocess.run(
            cli("serve", str(repo), "--port", str(port), "--workers", "2"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        holder.close()
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(lines) <= 2, lines


def test_unload_reaches_every_worker_and_a_killed_worker_comes_back(
    repo: Path, tmp_path: Path
) -> None:
    keys = init_keys(tmp_path / "keys")
    audit = tmp_path / "audit" / "audit.jsonl"
    flags = ("--workers", "2", "--audit-log", str(audit), "--audit-key-file", str(keys.audit_key))
    with cli_server(repo, *flags) as server:
        server.wait_for_line(
            "with 2 workers", timeout_s=30
        )  # both listen (ready is one worker's word)
        workers = children(server.proc.pid)
        assert len(workers) == 2
        # SIGKILL one worker: the other keeps answering; the supervisor starts a new one
        victim = workers[0]
        import os

        os.kill(victim, signal.SIGKILL)
        codes = [fresh(server.url, "/v2/models/affine").status_code for _ in range(30)]
        assert set(codes) == {200}, codes
        wait_for(
            lambda: victim not in children(server.proc.pid) and len(children(server.proc.pid)) == 2,
            "the restarted worker",
        )
        wait_for(
            lambda: (
                len(
                    {
                        fresh(server.url, "/v2/health/ready").headers["x-shipyard-worker"]
                        for _ in range(40)
                    }
                )
                == 2
            ),
            "both workers answering again",
        )
        assert any("starting it again" in line for line in server.lines)
        text = fresh(server.url, "/metrics").text
        restarts = {
            s.labels["worker"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "shipyard_server_worker_restarts_total"
        }
        assert sorted(restarts.values()) == [0.0, 1.0], restarts
        # an unload through one worker is done by both
        unloaded = fresh(server.url, "/v2/repository/models/affine/unload", "POST")
        assert unloaded.status_code == 200, unloaded.text

        def everywhere_unloaded() -> bool:
            answers = [fresh(server.url, "/v2/models/affine/ready") for _ in range(30)]
            workers_seen = {a.headers["x-shipyard-worker"] for a in answers}
            return len(workers_seen) == 2 and all(a.status_code == 400 for a in answers)

        wait_for(everywhere_unloaded, "the unload on both workers", timeout_s=10)
        assert server.stop() == 0
    chains = sorted(p.name for p in audit.parent.glob("audit.worker*.jsonl"))
    assert chains == ["audit.worker1.jsonl", "audit.worker2.jsonl"]
    verified = subprocess.run(
        cli("audit", "verify", str(audit), "--key-file", str(keys.audit_key), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and len(report["chains"]) == 2
    # the unload is recorded by the worker that took the call and by its peer
    events = [
        json.loads(line)
        for chain in audit.parent.glob("audit.worker*.jsonl")
        for line in chain.read_text().splitlines()
    ]
    assert sum(e.get("event") == "model.unload" for e in events) >= 2


def test_keep_alive_connections_spread_over_the_workers(repo: Path) -> None:
    """Sixteen keep-alive connections opened while one worker is down all land on the
    other; once it is back, the busier worker closes its surplus after complete responses
    (`Connection: close`), the clients reconnect (http.client does by itself) and the
    kernel spreads them: 8 and 8, and every request answered."""
    with cli_server(repo, "--workers", "2") as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        os.kill(children(server.proc.pid)[0], signal.SIGKILL)
        wait_for(lambda: len(children(server.proc.pid)) == 1, "the killed worker gone")
        port = int(server.url.rsplit(":", 1)[1])
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        body = json.dumps(BODY)
        headers = {"Content-Type": "application/json"}

        def one_round() -> Counter[str]:
            seen: Counter[str] = Counter()
            for connection in connections:
                connection.request("POST", "/v2/models/affine/infer", body, headers)
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
                seen[response.getheader("x-shipyard-worker") or "?"] += 1
                if response.getheader("connection") == "close":
                    seen["moved"] += 1  # reconnects for the next round
            return seen

        try:
            alone = one_round()
            assert list(alone.values()) == [16], alone  # all on the surviving worker
            wait_for(
                lambda: (
                    len(children(server.proc.pid)) == 2
                    and len(
                        {
                            fresh(server.url, "/v2/health/ready").headers["x-shipyard-worker"]
                            for _ in range(20)
                        }
                    )
                    == 2
                ),
                "the restarted worker answering",
            )
            rounds = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rounds.append(one_round())
                if sorted(rounds[-1].values()) == [8, 8]:  # 8 and 8, none told to move
                    break
            assert sorted(rounds[-1].values()) == [8, 8], rounds
            # balanced: the connections stay where they are now
            assert sorted(one_round().values()) == [8, 8], rounds
        finally:
            for connection in connections:
                connection.close()
        assert server.stop() == 0


def test_sigterm_drains_every_worker_with_requests_in_flight(repo: Path) -> None:
    with cli_server(repo, "--workers", "2", "--shutdown-delay", "1") as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        server.proc.send_signal(signal.SIGTERM)
        answered = 0
        deadline = time.monotonic() + 0.8  # within the shutdown delay
        while time.monotonic() < deadline:
            if fresh(server.url, "/v2/models/affine/infer", "POST", json=BODY).status_code == 200:
                answered += 1
        assert answered > 0
        assert server.proc.wait(30) == 0
    assert sum("draining" in line for line in server.lines) >= 1


def test_a_rollout_decision_reaches_every_worker(tmp_path: Path) -> None:
    import shipyard
    from tests.conftest import make_affine_onnx

    repo = tmp_path / "models"
    for _ in range(2):
        shipyard.pack(make_affine_onnx(), name="affine", repo=repo)
    (repo / "affine" / "model.toml").write_text(
        "[rollout]\ncandidate = 2\npercent = 50\n[rollout.gate]\nmin_requests = 1000000\n",
        encoding="utf-8",
    )
    with cli_server(repo, "--workers", "2") as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        promoted = fresh(server.url, "/v2/models/affine/rollout/promote", "POST")
        assert promoted.status_code == 200, promoted.text

        def everywhere_promoted() -> bool:
            answers = [fresh(server.url, "/v2/models/affine/rollout") for _ in range(30)]
            workers_seen = {a.headers["x-shipyard-worker"] for a in answers}
            return len(workers_seen) == 2 and {a.json()["phase"] for a in answers} == {"promoted"}

        wait_for(everywhere_promoted, "the promotion on both workers", timeout_s=10)
        triggers = {
            fresh(server.url, "/v2/models/affine/rollout").json()["decision"]["trigger"]
            for _ in range(30)
        }
        assert triggers == {"manual", "peer"}
        versions = {
            fresh(server.url, "/v2/models/affine/infer", "POST", json=BODY).json()["model_version"]
            for _ in range(30)
        }
        assert versions == {"2"}


def test_drift_windows_add_up_across_workers(tmp_path: Path) -> None:
    import shipyard
    from tests.serving.conftest import scale_graph

    repo = tmp_path / "models"
    rng = np.random.default_rng(0)
    reference = {"x": rng.normal(size=(5000, 4)).astype(np.float32)}
    shipyard.pack(scale_graph(), name="scale", repo=repo, reference_data=reference)
    (repo / "scale" / "model.toml").write_text(
        "[drift]\nenabled = true\nsample_rate = 1.0\nwindow = 100000\n", encoding="utf-8"
    )
    rows, sent = 10, 0
    with cli_server(repo, "--workers", "2") as server:
        server.wait_for_line("with 2 workers", timeout_s=30)
        seen: set[str] = set()
        for _ in range(60):
            x = rng.normal(size=(rows, 4)).astype(np.float32)
            x[:, 0] += 3.0  # one feature shifted
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
                                "data": x.ravel().tolist()}]}  # fmt: skip
            response = fresh(server.url, "/v2/models/scale/infer", "POST", json=body)
            assert response.status_code == 200, response.text
            seen.add(response.headers["x-shipyard-worker"])
            sent += rows
        assert seen == {"1", "2"}

        def drift_seen() -> set[tuple[float, bool]]:
            found = set()
            for _ in range(8):
                families = text_string_to_metric_families(fresh(server.url, "/metrics").text)
                values = {
                    (s.name, s.labels["feature"]): s.value
                    for f in families
                    for s in f.samples
                    if s.name.startswith("shipyard_drift_")
                }
                shifted = values.get(("shipyard_drift_psi", "x[0]"), 0) > 0.25
                calm = values.get(("shipyard_drift_psi", "x[1]"), 1) < 0.1
                found.add((values.get(("shipyard_drift_samples", "x[0]"), 0.0), shifted and calm))
            return found

        # every scrape, whichever worker answers it, judges the window of both
        wait_for(lambda: drift_seen() == {(float(sent), True)}, "drift summed over workers")
