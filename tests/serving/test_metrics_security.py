"""A real server on 127.0.0.1: refusals and 404s counted, process metrics, name limits, load answers."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.codecs import encode_request
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.security.tokens import TokenStore
from shipyard.serving.grpc import v2
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings

INFER_BODY = encode_request({"x": np.ones((1, 4), np.float32)})[0]
LONG = "m" * 5000


@pytest.fixture
def served(
    tmp_path: Path, pack: Callable[..., Path], repo: Path
) -> Iterator[tuple[RunningServer, dict[str, str], Path]]:
    pack()
    tokens = tmp_path / "tokens.json"
    store = TokenStore(tokens)
    secrets = {
        "meta": store.create("meta", ["metadata:*"]),
        "admin": store.create("admin", ["admin:*"]),
        "revoked": store.create("revoked", ["infer:*"]),
        "old": store.create("old", ["infer:*"], expires=dt.timedelta(hours=1)),
    }
    store.revoke("revoked")
    _expire(tokens, "old")
    settings = load_settings(
        repository=repo, host="127.0.0.1", port=0, grpc_port=0, poll_interval_s=0, auth=tokens
    )
    with start_in_thread(settings=settings, timeout_s=60) as server:
        yield server, secrets, repo


def _expire(path: Path, name: str) -> None:
    doc = json.loads(path.read_text())
    for record in doc["tokens"]:
        if record["name"] == name:
            record["expires"] = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    path.write_text(json.dumps(doc))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_refusals_and_not_found_are_counted_with_process_metrics(
    served: tuple[RunningServer, dict[str, str], Path],
) -> None:
    server, secrets, _ = served
    meta = {"Authorization": f"Bearer {secrets['meta']}"}
    admin = {"Authorization": f"Bearer {secrets['admin']}"}
    infer = "/v2/models/scale/infer"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post(infer, content=INFER_BODY).status_code == 401
        for name, expected in (("revoked", 401), ("old", 401)):
            headers = {"Authorization": f"Bearer {secrets[name]}"}
            assert client.post(infer, content=INFER_BODY, headers=headers).status_code == expected
        bad = {"Authorization": "Bearer shp_not-a-token"}
        assert client.post(infer, content=INFER_BODY, headers=bad).status_code == 401
        assert client.post(infer, content=INFER_BODY, headers=meta).status_code == 403
        assert client.get("/v2/models/nope", headers=meta).status_code == 404
        assert client.get("/v2/models/scale/versions/9", headers=meta).status_code == 404
        assert client.get("/v1/models/nope", headers=meta).status_code == 404
        assert client.get("/v2/no/such/route", headers=admin).status_code == 404
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        triton = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            triton.get_model_metadata("nope", headers={"authorization": meta["Authorization"]})
        triton.close()
        response = client.get("/metrics", headers=meta)
    assert response.status_code == 200
    samples = _samples(response.text)

    def auth(reason: str, protocol: str = "http") -> float:
        key = ("shipyard_auth_failures_total", (("protocol", protocol), ("reason", reason)))
        return samples.get(key, 0.0)

    assert auth("missing_token") == 1 and auth("revoked") == 1 and auth("expired") == 1
    assert auth("invalid_token") == 1 and auth("insufficient_scope") == 1
    not_found = {
        kind: samples[("shipyard_not_found_total", (("kind", kind),))]
        for kind in ("model", "version", "route")
    }
    assert not_found == {"model": 3, "version": 1, "route": 1}  # one model 404 over gRPC
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert any(key[0] == name for key in samples), name
    assert any(key[0] == "python_info" for key in samples)

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        ready = channel.unary_unary(
            f"/{v2.SERVICE}/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            ready(pb.ModelReadyRequest(name="scale"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with httpx.Client(base_url=server.url, timeout=10) as client:
        samples = _samples(client.get("/metrics", headers=meta).text)
    assert auth("missing_token", "grpc") == 1


def test_overlong_names_are_400_on_every_route(
    served: tuple[RunningServer, dict[str, str], Path],
) -> None:
    """A 5,000-character model name reached the file system and answered 500."""
    server, secrets, _ = served
    admin = {"Authorization": f"Bearer {secrets['admin']}"}
    calls = [
        ("GET", f"/v2/models/{LONG}", None),
        ("GET", f"/v2/models/{LONG}/ready", None),
        ("GET", f"/v2/models/{LONG}/versions/1", None),
        ("GET", f"/v2/models/{LONG}/stats", None),
        ("GET", f"/v2/models/{LONG}/config", None),
        ("POST", f"/v2/models/{LONG}/infer", INFER_BODY),
        ("POST", f"/v2/repository/models/{LONG}/load", b""),
        ("POST", f"/v2/repository/models/{LONG}/unload", b""),
        ("GET", f"/v1/models/{LONG}", None),
        ("GET", f"/v1/models/{LONG}/metadata", None),
        ("POST", f"/v1/models/{LONG}:predict", b'{"instances": [[1, 2, 3, 4]]}'),
    ]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for method, path, body in calls:
            response = client.request(method, path, content=body, headers=admin)
            assert response.status_code == 400, (method, path[:40], response.status_code)
            assert "at most 128" in response.json()["error"]
        # 128 characters is still a name: unknown, not malformed
        assert client.get(f"/v2/models/{'m' * 128}", headers=admin).status_code == 404
    metadata = [("authorization", f"Bearer {secrets['admin']}")]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for method, request, reply in (
            ("ModelMetadata", pb.ModelMetadataRequest(name=LONG), pb.ModelMetadataResponse),
            (
                "RepositoryModelLoad",
                pb.RepositoryModelLoadRequest(model_name=LONG),
                pb.RepositoryModelLoadResponse,
            ),
        ):
            call = channel.unary_unary(
                f"/{v2.SERVICE}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=reply.FromString,
            )
            with pytest.raises(grpc.RpcError) as info:
                call(request, metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


def test_load_answers_400_when_the_newest_version_is_refused(
    served: tuple[RunningServer, dict[str, str], Path],
    corrupt_copy: Callable[[Path, Path], None],
) -> None:
    """The load answered 200 {} while version 2 had been refused."""
    server, secrets, repo = served
    admin = {"Authorization": f"Bearer {secrets['admin']}"}
    corrupt_copy(repo / "scale" / "1", repo / "scale" / "2")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/v2/repository/models/scale/load", headers=admin)
        assert response.status_code == 400
        error = response.json()["error"]
        assert "version 2:" in error and "says version 1" in error
        assert "still serving version(s) 1" in error
        # the old version keeps serving
        ok = client.post("/v2/models/scale/infer", content=INFER_BODY, headers=admin)
        assert ok.status_code == 200 and ok.json()["model_version"] == "1"
        shutil.rmtree(repo / "scale" / "2")
        assert client.post("/v2/repository/models/scale/load", headers=admin).status_code == 200
