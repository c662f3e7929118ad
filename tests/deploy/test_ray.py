"""`shipyard deploy ray` end to end: a real local Ray cluster behind Shipyard's front door.

One module-scoped deployment (`shipyard deploy ray` as a subprocess, which starts the
cluster on 127.0.0.1 and stops it on exit) serves two models: `affine` with the flags'
two replicas, `iris` with one from its model.toml [ray]. This test process joins the same
cluster (`ray.init(address=...)`) to read Serve's own view of it. Checked: one Serve
application per served version with the replica count and CPUs asked for; answers equal
ONNX Runtime's in-process ones; every listening socket of the cluster is on 127.0.0.1; a
replica killed with SIGKILL costs at most 503s (never a 500) and Ray Serve replaces it; a
tampered version is refused with its reason while the good one keeps serving; an unload
removes the application; SIGTERM exits 0 and leaves no Ray process behind.

The other half of the Ray contract (tritonclient JSON/binary/gRPC, TF Serving REST, errors,
auth, answered exactly like the plain server) is tests/faults/test_contract.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import shipyard
from shipyard.model import load_model
from tests.faults._cli_server import CliServer, affine_repo, cli_server
from tests.serving.test_acceptance import wait_for

# as the server's local cluster does (ray_pool.SINGLE_MACHINE_ENV): its node address is
# 127.0.0.1, which this process must not swap for the machine's when it joins
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")  # the local cluster's token (~/.ray/auth_token)
ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed (pip install shipyard[ray])"
)
serve = pytest.importorskip("ray.serve", reason="the ray extra is not installed")

pytestmark = pytest.mark.timeout(300)

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1.0] * 8}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    path = affine_repo(tmp_path_factory.mktemp("ray") / "models")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    shipyard.pack(
        LogisticRegression(max_iter=300).fit(x, y), name="iris", repo=path, sample_input=x[:4]
    )
    (path / "iris" / "model.toml").write_text("[ray]\nreplicas = 1\nnum_cpus = 0.25\n")
    return path


@pytest.fixture(scope="module")
def deployment(repo: Path) -> Iterator[CliServer]:
    with cli_server(
        repo,
        "--replicas",
        "2",
        "--num-cpus",
        "0.5",
        command=("deploy", "ray"),
        ready_timeout_s=180,
        stop_timeout_s=60,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(deployment: CliServer) -> Iterator[Any]:
    """This process joined to the deployment's cluster, to read Serve's view of it."""
    line = deployment.wait_for_line("Ray Serve started on this machine at ", timeout_s=5)
    address = re.search(r" at (127\.0\.0\.1:\d+)", line)
    assert address, line
    ray.init(
        address=address.group(1),
        namespace="shipyard",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the local Ray cluster's processes are the server's)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def replica_pids(server: CliServer, deployment_name: str) -> list[int]:
    """Processes of one deployment's replicas (Ray titles them ServeReplica:APP:DEPLOYMENT)."""
    pids = []
    for pid in descendants(server.proc.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica" in title and f":{deployment_name}" in title:
            pids.append(pid)
    return pids


def listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket in LISTEN state owned by `pids`."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = fields[1]
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append((pid, _address(inodes[target[8:-1]])))
    return found


def _address(hex_addr: str) -> str:
    """`/proc/net/tcp{,6}`'s address (32-bit words in host order) as `IP:PORT`; an
    IPv4-mapped IPv6 address as its IPv4 one."""
    host, port = hex_addr.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def test_each_version_is_one_serve_application_with_its_replicas(
    deployment: CliServer, cluster: Any
) -> None:
    status = serve.status().applications
    assert {"shipyard-affine-v1", "shipyard-iris-v1"} <= set(status), sorted(status)
    affine = status["shipyard-affine-v1"].deployments["affine-v1"]
    iris = status["shipyard-iris-v1"].deployments["iris-v1"]
    assert affine.replica_states.get("RUNNING") == 2, affine
    assert iris.replica_states.get("RUNNING") == 1, iris  # model.toml [ray] replicas = 1
    # CPUs Ray reserved: 2 affine replicas x 0.5 (--num-cpus) + 1 iris replica x 0.25
    reserved = ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0)
    assert reserved == pytest.approx(1.25), reserved


def test_answers_are_onnx_runtimes(deployment: CliServer, repo: Path) -> None:
    model = load_model(repo / "affine")
    expected = model.infer({"x": np.ones((2, 4), np.float32)})["y"]
    model.close()
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        for _ in range(8):  # several batches: both replicas answer alike
            answer = http.post("/v2/models/affine/infer", json=BODY)
            assert answer.status_code == 200, answer.text
            y = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
            np.testing.assert_allclose(y, expected, rtol=1e-6)
        bad = http.post(
            "/v2/models/affine/infer",
            json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
            },
        )
        assert bad.status_code == 400 and "shape" in bad.json()["error"], bad.text


def test_the_cluster_listens_on_loopback_only(deployment: CliServer) -> None:
    sockets = listening(descendants(deployment.proc.pid) | {deployment.proc.pid})
    assert sockets, "no listening socket found below the server"
    exposed = [(pid, addr) for pid, addr in sockets if not addr.startswith("127.0.0.1:")]
    assert not exposed, exposed


def test_a_killed_replica_costs_503s_at_most_and_is_replaced(
    deployment: CliServer, cluster: Any
) -> None:
    before = replica_pids(deployment, "affine-v1")
    assert len(before) == 2, before
    os.kill(before[0], signal.SIGKILL)
    codes: list[int] = []
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = http.post("/v2/models/affine/infer", json=BODY)
            codes.append(answer.status_code)
            if answer.status_code != 200:
                assert answer.status_code == 503, answer.text
                assert "Traceback" not in answer.text
            now = replica_pids(deployment, "affine-v1")
            if len(now) == 2 and before[0] not in now and codes[-5:] == [200] * 5:
                break
            time.sleep(0.05)
    assert codes[-5:] == [200] * 5, codes[-20:]
    after = replica_pids(deployment, "affine-v1")
    assert len(after) == 2 and before[0] not in after, (before, after)


def test_a_tampered_version_is_refused_and_the_good_one_keeps_serving(
    deployment: CliServer, repo: Path
) -> None:
    """The replicas verify every hash themselves: a model file changed after packing makes
    the version's deployment fail, with the reason in the index, never a traceback."""
    import shutil

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    fitted = LogisticRegression(C=0.5, max_iter=500).fit(x, y)
    shipyard.pack(fitted, name="iris", repo=repo, sample_input=x[:4], version=2)
    model = repo / "iris" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-8] + b"tampered")
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": x[0].tolist()}]}
    try:
        with httpx.Client(base_url=deployment.url, timeout=120) as http:
            http.post("/v2/repository/models/iris/load")

            def refused() -> dict[str, Any] | None:
                for entry in http.post("/v2/repository/index").json():
                    mine = entry["name"] == "iris" and str(entry.get("version")) == "2"
                    if mine and entry.get("state") == "UNAVAILABLE" and entry.get("reason"):
                        return dict(entry)
                return None

            wait_for(lambda: refused() is not None, "version 2 refused", timeout_s=120)
            entry = refused()
            assert entry is not None
            assert "sha256" in entry["reason"] or "changed" in entry["reason"], entry
            assert "Traceback" not in entry["reason"] and "\n" not in entry["reason"], entry
            answer = http.post("/v2/models/iris/infer", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == "1"
    finally:
        shutil.rmtree(repo / "iris" / "2")


def test_unloading_a_model_deletes_its_application(deployment: CliServer, cluster: Any) -> None:
    with httpx.Client(base_url=deployment.url, timeout=60) as http:
        assert http.post("/v2/repository/models/iris/unload").status_code == 200
        wait_for(
            lambda: "shipyard-iris-v1" not in serve.status().applications,
            "iris's application deleted",
            timeout_s=60,
        )
        assert http.post("/v2/repository/models/iris/load").status_code == 200
        assert "shipyard-iris-v1" in serve.status().applications


def test_sigterm_exits_0_and_stops_the_cluster(repo: Path, deployment: CliServer) -> None:
    """Last: stops the module's deployment itself."""
    below = descendants(deployment.proc.pid)
    assert below, "the local Ray cluster runs below the server"
    ray.shutdown()  # this process leaves first (the `cluster` fixture's teardown is a no-op)
    assert deployment.stop(timeout_s=60) == 0, "\n".join(deployment.lines[-30:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in below if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
