"""One contract, every deployment: the same suite against `shipyard serve`, `--workers 2` and
`shipyard deploy ray --replicas 2` (Ray Serve replicas behind the same front door).

Each deployment is a real `shipyard serve` process group on 127.0.0.1 with auth on, HTTP and
gRPC. The suite drives it with unmodified clients (tritonclient HTTP JSON and binary,
tritonclient gRPC, TF Serving REST through httpx) and records every answer: outputs,
status codes and error messages. Every test runs against each deployment, and the last one
checks that the deployment answered every call exactly as the plain server did. The Ray
deployment needs the `ray` extra (CI installs it through `all`); without it, its
parameter is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.security.tokens import TokenStore
from tests.faults._cli_server import CliServer, cli_server

pytestmark = pytest.mark.timeout(240)

DEPLOYMENTS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "workers": ("--workers", "2"),
    "ray": ("--replicas", "2", "--num-cpus", "0.5"),
}
COMMANDS = {"ray": ("deploy", "ray")}
_GRPC = re.compile(r"gRPC listening on 127\.0\.0\.1:(\d+)")
ANSWERS: dict[str, dict[str, Any]] = {name: {} for name in DEPLOYMENTS}
"""deployment -> call -> what it answered (compared across deployments at the end)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], np.ndarray]:
    from sklearn.datasets import load_iris

    root = tmp_path_factory.mktemp("contract")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    repo = root / "models"
    shipyard.pack(
        LogisticRegression(max_iter=500).fit(x, y), name="iris", repo=repo, sample_input=x[:8]
    )
    store = TokenStore(root / "tokens.json")
    tokens = {
        "client": store.create("client", ["infer:iris", "metadata:iris"]),
        "other": store.create("other", ["infer:someone-else"]),
    }
    return repo, {**tokens, "file": str(store.path)}, x


@pytest.fixture(scope="module", params=list(DEPLOYMENTS))
def deployment(
    request: pytest.FixtureRequest, setup: tuple[Path, dict[str, str], np.ndarray]
) -> Iterator[tuple[str, CliServer, int]]:
    repo, tokens, _ = setup
    if request.param == "ray" and importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed (pip install shipyard[ray])")
    flags = ("--auth", tokens["file"], "--grpc-port", "0", *DEPLOYMENTS[request.param])
    slow = request.param == "ray"  # a local Ray cluster starts, then stops, with the server
    with cli_server(
        repo,
        *flags,
        command=COMMANDS.get(request.param, ("serve",)),
        ready_timeout_s=180 if slow else 30,
        stop_timeout_s=60 if slow else 15,
    ) as server:
        if request.param == "workers":
            server.wait_for_line("with 2 workers", timeout_s=30)
        grpc_port = 0
        for line in server.lines:
            if match := _GRPC.search(line):
                grpc_port = int(match.group(1))
        assert grpc_port, "\n".join(server.lines)
        yield request.param, server, grpc_port


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def record(name: str, call: str, value: Any) -> None:
    ANSWERS[name][call] = value


def test_tritonclient_http_json_and_binary(
    deployment: tuple[str, CliServer, int], setup: tuple[Path, dict[str, str], np.ndarray]
) -> None:
    name, server, _ = deployment
    _, tokens, x = setup
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        for binary in (False, True):
            feed = triton_http.InferInput("X", [16, 4], "FP32")
            feed.set_data_from_numpy(x[:16], binary_data=binary)
            outputs = [
                triton_http.InferRequestedOutput(n, binary_data=binary)
                for n in ("label", "probabilities")
            ]
            result = client.infer(
                "iris", [feed], outputs=outputs, headers=headers(tokens["client"])
            )
            record(name, f"http binary={binary}", {
                "version": result.get_response()["model_version"],
                "label": result.as_numpy("label").tolist(),
                "probabilities": np.round(result.as_numpy("probabilities"), 6).tolist(),
            })  # fmt: skip
        metadata = client.get_model_metadata("iris", headers=headers(tokens["client"]))
        record(name, "metadata", metadata)
    finally:
        client.close()


def test_tritonclient_grpc(
    deployment: tuple[str, CliServer, int], setup: tuple[Path, dict[str, str], np.ndarray]
) -> None:
    name, _, grpc_port = deployment
    _, tokens, x = setup
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        feed = triton_grpc.InferInput("X", [16, 4], "FP32")
        feed.set_data_from_numpy(x[16:32])
        result = client.infer(
            "iris", [feed], headers={"authorization": f"Bearer {tokens['client']}"}
        )
        record(name, "grpc", {
            "label": result.as_numpy("label").tolist(),
            "probabilities": np.round(result.as_numpy("probabilities"), 6).tolist(),
        })  # fmt: skip
        with pytest.raises(InferenceServerException) as refused:
            client.infer("iris", [feed], headers={"authorization": f"Bearer {tokens['other']}"})
        record(name, "grpc refused", refused.value.status())
    finally:
        client.close()


def test_tf_serving_rest(
    deployment: tuple[str, CliServer, int], setup: tuple[Path, dict[str, str], np.ndarray]
) -> None:
    name, server, _ = deployment
    _, tokens, x = setup
    with httpx.Client(base_url=server.url, timeout=10, headers=headers(tokens["client"])) as http:
        predict = http.post("/v1/models/iris:predict", json={"instances": x[32:40].tolist()})
        assert predict.status_code == 200, predict.text
        doc = predict.json()
        record(name, "tf predict", {
            "labels": [p["label"] for p in doc["predictions"]],
            "probabilities": [np.round(p["probabilities"], 6).tolist() for p in doc["predictions"]],
        })  # fmt: skip
        status = http.get("/v1/models/iris")
        record(name, "tf status", (status.status_code, status.json()))


def test_errors_and_auth(
    deployment: tuple[str, CliServer, int], setup: tuple[Path, dict[str, str], np.ndarray]
) -> None:
    name, server, _ = deployment
    _, tokens, _ = setup
    bad = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    calls = {
        "no token": ({}, "/v2/models/iris/infer", bad),
        "wrong scope": (headers(tokens["other"]), "/v2/models/iris/infer", bad),
        "bad shape": (headers(tokens["client"]), "/v2/models/iris/infer", bad),
        "unknown model": (headers(tokens["client"]), "/v2/models/nope/infer", bad),
        "bad json": (headers(tokens["client"]), "/v2/models/iris/infer", None),
    }
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for call, (hdrs, path, body) in calls.items():
            if body is None:
                response = http.post(path, content=b"{not json", headers=hdrs)
            else:
                response = http.post(path, json=body, headers=hdrs)
            assert 400 <= response.status_code < 500, (call, response.status_code, response.text)
            record(name, call, (response.status_code, response.json()))


def test_answers_are_the_plain_servers(deployment: tuple[str, CliServer, int]) -> None:
    """Runs last for each deployment (tests of one module-scoped param run together, in file
    order, plain first): every call it answered, it answered as the plain server did."""
    name = deployment[0]
    plain, calls = ANSWERS["plain"], ANSWERS[name]
    assert len(plain) >= 10, sorted(plain)
    assert sorted(calls) == sorted(plain), name
    for call, value in calls.items():
        assert value == plain[call], f"{name} answered {call} differently: {value} != {plain[call]}"
