"""V2 REST routes in process (httpx over ASGI): every endpoint, every error status."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.codecs import decode_response, encode_request
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

Fixtures = tuple[Path, Callable[..., Path], Callable[..., ServerSettings], Callable[..., Any]]


@pytest.fixture
def env(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
) -> Fixtures:
    pack()
    return repo, pack, settings_for, app_client


def infer_body(x: np.ndarray, **kwargs: Any) -> bytes:
    return encode_request({"x": x}, **kwargs)[0]


X = np.arange(8, dtype=np.float32).reshape(2, 4)


async def test_health_metadata_and_readiness(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        live = await client.get("/v2/health/live")
        assert (live.status_code, live.json()) == (200, {"live": True})
        ready = await client.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        meta = (await client.get("/v2")).json()
        assert meta["name"] == "shipyard"
        assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])
        for path in ("/v2/models/scale", "/v2/models/scale/versions/1"):
            model = (await client.get(path)).json()
            assert model == {
                "name": "scale",
                "versions": ["1"],
                "platform": "onnx_onnxv1",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "s", "datatype": "FP32", "shape": [-1]},
                ],
            }
        for path in ("/v2/models/scale/ready", "/v2/models/scale/versions/1/ready"):
            response = await client.get(path)
            assert (response.status_code, response.json()) == (
                200,
                {"name": "scale", "ready": True},
            )
        assert (await client.get("/v2/models/nope/ready")).status_code == 404
        assert (await client.get("/v2/models/scale/versions/7/ready")).status_code == 404
        await client.post("/v2/repository/models/scale/unload")
        response = await client.get("/v2/models/scale/ready")
        assert (response.status_code, response.json()["ready"]) == (400, False)


async def test_infer_json_without_content_type(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        body = infer_body(X, request_id="req-1", outputs=["s"])
        response = await client.post("/v2/models/scale/infer", content=body)
        assert response.status_code == 200, response.text
        assert "inference-header-content-length" not in response.headers
        assert response.json() == {
            "model_name": "scale",
            "model_version": "1",
            "id": "req-1",
            "outputs": [{"name": "s", "datatype": "FP32", "shape": [2], "data": [6.0, 22.0]}],
        }
        versioned = await client.post("/v2/models/scale/versions/1/infer", content=body)
        assert versioned.json()["outputs"] == response.json()["outputs"]


async def test_infer_binary_in_and_out(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        body, length = encode_request({"x": X}, binary_inputs=True, binary_outputs=True)
        response = await client.post(
            "/v2/models/scale/infer",
            content=body,
            headers={
                "Inference-Header-Content-Length": str(length),
                "Content-Type": "application/octet-stream",
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        decoded = decode_response(
            response.content, header_length=int(response.headers["inference-header-content-length"])
        )
        np.testing.assert_array_equal(decoded.outputs["y"], X * 2)
        np.testing.assert_array_equal(decoded.outputs["s"], X.sum(axis=1))


async def test_gzip_request_and_response(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo, compress_min_bytes=1024)) as client:
        small = await client.post("/v2/models/scale/infer", content=infer_body(X))
        assert "content-encoding" not in small.headers
        x = np.ones((64, 4), np.float32)
        response = await client.post(
            "/v2/models/scale/infer",
            content=gzip.compress(infer_body(x)),
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-encoding"] == "gzip"
        assert response.json()["outputs"][1]["data"] == [4.0] * 64  # httpx decompressed it


MALFORMED: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty": (b"", {}),
    "not json": (b"\xff\xfe{", {}),
    "wrong shape": (infer_body(np.zeros((2, 3), np.float32)), {}),
    "wrong dtype": (infer_body(np.zeros((2, 4), np.float64)), {}),
    "unknown input": (encode_request({"z": X})[0], {}),
    "unknown output": (infer_body(X, outputs=["nope"]), {}),
    "count mismatch": (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2,4],"data":[1,2]}]}',
        {},
    ),
    "header length not a number": (infer_body(X), {"Inference-Header-Content-Length": "ten"}),
    "header length past body": (infer_body(X), {"Inference-Header-Content-Length": "100000"}),
    "bad gzip": (b"not gzip", {"Content-Encoding": "gzip"}),
    "unknown encoding": (infer_body(X), {"Content-Encoding": "br"}),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
async def test_malformed_requests_get_400_with_a_json_error(env: Fixtures, case: str) -> None:
    repo, _, settings_for, app_client = env
    body, headers = MALFORMED[case]
    async with app_client(settings_for(repo)) as client:
        response = await client.post("/v2/models/scale/infer", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert isinstance(response.json()["error"], str) and response.json()["error"]


async def test_binary_size_lie_is_400(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        body, length = encode_request({"x": X}, binary_inputs=True)
        response = await client.post(
            "/v2/models/scale/infer",
            content=body + b"\x00\x00\x00\x00",
            headers={"Inference-Header-Content-Length": str(length)},
        )
        assert response.status_code == 400
        assert "binary_data_size" in response.json()["error"]


async def test_not_found_and_wrong_method_are_json(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        for path in (
            "/v2/models/nope",
            "/v2/models/scale/versions/3",
            "/v2/models/scale/versions/x",
        ):
            response = await client.get(path)
            assert response.status_code == 404 and "error" in response.json()
        response = await client.post("/v2/models/nope/infer", content=infer_body(X))
        assert response.status_code == 404
        response = await client.get("/v3/whatever")
        assert response.status_code == 404 and "error" in response.json()
        response = await client.get("/v2/models/scale/infer")
        assert response.status_code == 405 and "error" in response.json()


async def test_body_limit_gives_413(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo, limits={"max_body_bytes": 2048})) as client:
        big = infer_body(np.ones((200, 4), np.float32))
        response = await client.post("/v2/models/scale/infer", content=big)
        assert response.status_code == 413 and "limit" in response.json()["error"]
        bomb = gzip.compress(b" " * 100_000)
        response = await client.post(
            "/v2/models/scale/infer", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert response.status_code == 413


async def test_overload_is_503_with_retry_after(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    settings = settings_for(
        repo, batching={"max_queue_size": 1, "max_queue_delay_us": 300_000, "max_batch_size": 64}
    )
    async with app_client(settings) as client:
        body = infer_body(X)
        results = await asyncio.gather(
            *(client.post("/v2/models/scale/infer", content=body) for _ in range(4))
        )
        codes = sorted(r.status_code for r in results)
        assert codes[0] == 200 and codes[-1] == 503
        refused = next(r for r in results if r.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert "overloaded" in refused.json()["error"]
        metrics = (await client.get("/metrics")).text
        assert 'outcome="overloaded"' in metrics


async def test_repository_index_load_unload(env: Fixtures) -> None:
    repo, pack, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        index = await client.post("/v2/repository/index")  # empty body, as tritonclient sends
        assert index.json() == [{"name": "scale", "version": "1", "state": "READY", "reason": ""}]
        pack("fixed")  # not polled: appears as not loaded until asked
        index = (await client.post("/v2/repository/index", content=b"{}")).json()
        assert {"name": "fixed", "state": "UNAVAILABLE", "reason": "not loaded yet"} in index
        ready_only = (await client.post("/v2/repository/index", json={"ready": True})).json()
        assert [r["name"] for r in ready_only] == ["scale"]
        assert (await client.post("/v2/repository/models/fixed/load")).status_code == 200
        assert (await client.get("/v2/models/fixed/ready")).status_code == 200
        response = await client.post(
            "/v2/repository/models/scale/unload", json={"parameters": {"unload_dependents": False}}
        )
        assert response.status_code == 200
        assert (
            await client.post("/v2/models/scale/infer", content=infer_body(X))
        ).status_code == 503
        assert (
            await client.post("/v2/repository/models/scale/load", content=b"{}")
        ).status_code == 200
        assert (
            await client.post("/v2/models/scale/infer", content=infer_body(X))
        ).status_code == 200
        response = await client.post("/v2/repository/models/nope/load")
        assert response.status_code == 404
        response = await client.post(
            "/v2/repository/models/scale/load", json={"parameters": {"config": "{}"}}
        )
        assert response.status_code == 400 and "model.toml" in response.json()["error"]
        response = await client.post("/v2/repository/index", content=b"[1]")
        assert response.status_code == 400


async def test_statistics_and_metrics(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        for _ in range(3):
            await client.post("/v2/models/scale/infer", content=infer_body(X))
        await client.post(
            "/v2/models/scale/infer", content=infer_body(np.zeros((1, 3), np.float32))
        )
        for path in (
            "/v2/models/stats",
            "/v2/models/scale/stats",
            "/v2/models/scale/versions/1/stats",
        ):
            stats = (await client.get(path)).json()["model_stats"]
            assert [(s["name"], s["version"]) for s in stats] == [("scale", "1")]
            inference = stats[0]["inference_stats"]
            assert inference["success"]["count"] == 3 and inference["fail"]["count"] == 1
            assert inference["compute_infer"]["count"] == 3 and inference["queue"]["ns"] >= 0
            assert stats[0]["inference_count"] == 6 and stats[0]["execution_count"] == 3
            assert stats[0]["batch_stats"][0]["batch_size"] == 2
        assert (await client.get("/v2/models/nope/stats")).status_code == 404
        assert (await client.get("/v2/models/scale/versions/5/stats")).status_code == 404
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        labels = 'model="scale",outcome="{}",protocol="v2_http",version="1"'
        for line in (
            "shipyard_requests_total{" + labels.format("success") + "} 3.0",
            "shipyard_requests_total{" + labels.format("invalid") + "} 1.0",
            "shipyard_models_loaded 1.0",
            'shipyard_batch_size_count{model="scale",version="1"} 3.0',
            'shipyard_queue_depth{model="scale",version="1"} 0.0',
        ):
            assert line in text
        for name in ("queue", "compute", "request"):
            assert f"shipyard_{name}_duration_seconds_bucket" in text


async def test_request_ids_are_echoed_or_made(env: Fixtures) -> None:
    repo, _, settings_for, app_client = env
    async with app_client(settings_for(repo)) as client:
        given = await client.get("/v2/health/live", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/v2/health/live")
        assert len(made.headers["x-request-id"]) == 16


async def test_strings_model_takes_json_and_binary_bytes(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    sample_for: Callable[..., np.ndarray],
) -> None:
    pack("identity")
    async with app_client(settings_for(repo)) as client:
        inputs = {f"in_{dt}": sample_for(dt) for dt in ("BYTES", "FP16", "BOOL", "UINT64")}
        full = {**{f"in_{dt}": sample_for(dt) for dt in _identity_types()}, **inputs}
        for binary in (False, True):
            body, length = encode_request(full, binary_inputs=binary, binary_outputs=binary)
            headers = {"Inference-Header-Content-Length": str(length)} if length else {}
            response = await client.post("/v2/models/identity/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text
            header = response.headers.get("inference-header-content-length")
            decoded = decode_response(
                response.content, header_length=int(header) if header else None
            )
            for name, value in full.items():
                got = decoded.outputs[name.replace("in_", "out_")]
                if value.dtype == object:
                    got = np.array(
                        [v.decode() if isinstance(v, bytes) else v for v in got.flat], dtype=object
                    )
                    assert got.tolist() == value.reshape(-1).tolist()
                else:
                    np.testing.assert_array_equal(got, value)


def _identity_types() -> list[str]:
    from shipyard.package.dtypes import DTYPES

    return [d.v2 for d in DTYPES]


def test_the_route_table_matches_exactly_the_infer_routes() -> None:
    from shipyard.serving.routing import TABLE

    def infer(path: str) -> dict[str, str] | None:
        found = TABLE.find(path)
        route = found.route("POST") if found is not None else None
        return found.params if found is not None and route and route.handler == "v2.infer" else None

    assert infer("/v2/models/m/infer") == {"name": "m"}
    assert infer("/v2/models/m/versions/2/infer") == {"name": "m", "version": "2"}
    assert infer("/v2/models/stats/infer") == {"name": "stats"}  # a literal, then a name
    for path in (
        "/v2/models//infer",
        "/v2/models/m/infer/",
        "/v2/models/m/versions//infer",
        "/v2/models/m/other/2/infer",
        "/v2/models/a/b/infer",
        "/v2/models/m/ready",
        "/v1/models/m/infer",
    ):
        assert infer(path) is None, path


async def test_an_error_escaping_the_app_is_a_json_500_naming_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outermost layer answers what no handler caught: one JSON line, no traceback."""
    import httpx

    from shipyard.serving.http.common import RequestContextMiddleware

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug, not the request's fault")

    async def half_sent(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("after the response began")

    transport = httpx.ASGITransport(app=RequestContextMiddleware(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://shipyard") as client:
        response = await client.get("/v2", headers={"X-Request-ID": "rid-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "rid-500"
    assert response.json() == {
        "error": "internal server error (request id rid-500); see the server log"
    }
    assert "a bug, not the request's fault" in caplog.text  # the traceback is in the log

    transport = httpx.ASGITransport(app=RequestContextMiddleware(half_sent))
    async with httpx.AsyncClient(transport=transport, base_url="http://shipyard") as client:
        with pytest.raises(RuntimeError, match="after the response began"):
            await client.get("/v2")  # the server closes the connection; nothing more to say
