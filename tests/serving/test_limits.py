"""Input limits: each one gives its 4xx with a message naming it; per-model overrides work."""

from __future__ import annotations

import gzip
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from shipyard.codecs import encode_request
from shipyard.codecs.errors import ProtocolError, RequestTooLarge
from shipyard.codecs.limits import DecodeLimits, check_json_depth
from shipyard.codecs.v2 import decode_request
from shipyard.errors import ShipyardError
from shipyard.serving.errors import ModelConfigError
from shipyard.serving.http.common import (
    BODY_LIMIT,
    declared_refusal,
    error_response,
    read_body,
)
from shipyard.serving.model_config import read_model_config
from shipyard.serving.settings import ServerSettings
from shipyard.serving.version_config import OutputTooLarge, check_output_size

pytestmark = pytest.mark.anyio

URL = "/v2/models/scale/infer"


def body_of(x: np.ndarray) -> bytes:
    return encode_request({"x": x})[0]


def tensor_doc(**tensor: Any) -> bytes:
    base: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
    base.update(tensor)
    return orjson.dumps({"inputs": [base]})


@pytest.fixture
def scale(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
) -> tuple[Path, Callable[..., ServerSettings], Callable[..., Any]]:
    pack()
    return repo, settings_for, app_client


Env = tuple[Path, Callable[..., ServerSettings], Callable[..., Any]]


async def test_body_size_by_content_length_and_by_streaming(scale: Env) -> None:
    repo, settings_for, app_client = scale
    async with app_client(settings_for(repo, limits={"max_body_bytes": 2048})) as client:
        big = body_of(np.ones((200, 4), np.float32))
        response = await client.post(URL, content=big)
        assert response.status_code == 413 and "2048-byte limit" in response.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(URL, content=chunks())
        assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
        bomb = gzip.compress(b" " * 100_000)
        zipped = await client.post(URL, content=bomb, headers={"Content-Encoding": "gzip"})
        assert zipped.status_code == 413
        small = await client.post(URL, content=body_of(np.ones((2, 4), np.float32)))
        assert small.status_code == 200


async def test_json_depth(scale: Env) -> None:
    repo, settings_for, app_client = scale
    async with app_client(settings_for(repo, limits={"max_json_depth": 6})) as client:
        nested = tensor_doc(shape=[1, 1, 1, 4], data=[[[[1.0, 2.0, 3.0, 4.0]]]])
        response = await client.post(URL, content=nested)
        assert response.status_code == 400 and "max_json_depth" in response.json()["error"]
        flat = tensor_doc(data=[1.0, 2.0, 3.0, 4.0])
        assert (await client.post(URL, content=flat)).status_code == 200
        params = orjson.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}],
                "parameters": {"a": {"b": {"c": {"d": {"e": {}}}}}},
            }
        )
        assert (await client.post(URL, content=params)).status_code == 400


async def test_elements_per_tensor_and_per_request(scale: Env) -> None:
    repo, settings_for, app_client = scale
    limits = {"max_tensor_elements": 64, "max_request_elements": 100}
    async with app_client(settings_for(repo, limits=limits)) as client:
        response = await client.post(URL, content=tensor_doc(shape=[10**12], data=[1.0]))
        assert response.status_code == 413
        assert "max_tensor_elements" in response.json()["error"]
        over = await client.post(URL, content=body_of(np.ones((17, 4), np.float32)))
        assert over.status_code == 413
        two = orjson.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [15, 4], "data": [0.0] * 60},
                    {"name": "z", "datatype": "FP32", "shape": [15, 4], "data": [0.0] * 60},
                ]
            }
        )
        response = await client.post(URL, content=two)
        assert response.status_code == 413
        assert "max_request_elements" in response.json()["error"]
        assert (await client.post(URL, content=body_of(np.ones((16, 4), np.float32)))).is_success


async def test_declared_shape_against_data_and_binary_sizes(scale: Env) -> None:
    repo, settings_for, app_client = scale
    async with app_client(settings_for(repo)) as client:
        short = await client.post(URL, content=tensor_doc(shape=[2, 4], data=[1.0] * 4))
        assert short.status_code == 400 and "needs 8" in short.json()["error"]
        body, length = encode_request({"x": np.ones((2, 4), np.float32)}, binary_inputs=True)
        for content, header in (
            (body[:-4], length),  # fewer bytes than binary_data_size says
            (body + b"\0" * 4, length),  # more bytes than the sizes add up to
            (body, len(body) + 1),  # header length past the body
        ):
            response = await client.post(
                URL, content=content, headers={"Inference-Header-Content-Length": str(header)}
            )
            assert response.status_code == 400, response.text


async def test_bytes_element_size(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
) -> None:
    pack("identity")
    url = "/v2/models/identity/infer"
    async with app_client(settings_for(repo, limits={"max_bytes_element": 1024})) as client:
        doc = orjson.dumps(
            {
                "inputs": [
                    {"name": "in_BYTES", "datatype": "BYTES", "shape": [1], "data": ["é" * 600]}
                ]
            }
        )
        response = await client.post(url, content=doc)
        assert response.status_code == 413 and "max_bytes_element" in response.json()["error"]
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "in_BYTES",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4 + 2000},
                    }
                ]
            }
        )
        blob = struct.pack("<I", 2000) + b"a" * 2000
        response = await client.post(
            url,
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 413 and "max_bytes_element" in response.json()["error"]


async def test_output_size_cap(scale: Env) -> None:
    repo, settings_for, app_client = scale
    async with app_client(settings_for(repo, limits={"max_output_bytes": 1024})) as client:
        response = await client.post(URL, content=body_of(np.ones((100, 4), np.float32)))
        assert response.status_code == 413 and "max_output_bytes" in response.json()["error"]
        assert (await client.post(URL, content=body_of(np.ones((2, 4), np.float32)))).is_success
        stats = (await client.get("/v2/models/scale/stats")).json()["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == 1


async def test_model_toml_overrides_server_limits(scale: Env) -> None:
    repo, settings_for, app_client = scale
    (repo / "scale" / "model.toml").write_text("[limits]\nmax_body_bytes = 1_048_576\n")
    big = body_of(np.ones((200, 4), np.float32))  # over the server's 2048, under the model's
    async with app_client(settings_for(repo, limits={"max_body_bytes": 2048})) as client:
        assert (await client.post(URL, content=big)).status_code == 200
        refused = await client.post("/v2/models/nope/infer", content=big)
        assert refused.status_code == 413  # no model: the server's limit
    (repo / "scale" / "model.toml").write_text("[limits]\nmax_tensor_elements = 8\n")
    async with app_client(settings_for(repo)) as client:
        response = await client.post(URL, content=body_of(np.ones((3, 4), np.float32)))
        assert response.status_code == 413 and "of 8 per tensor" in response.json()["error"]
        rows = orjson.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 3})  # the same, TF Serving
        response = await client.post("/v1/models/scale:predict", content=rows)
        assert response.status_code == 413 and "of 8 per tensor" in response.json()["error"]
        ok = await client.post("/v1/models/scale:predict", content=b'{"instances": [[1,2,3,4]]}')
        assert ok.status_code == 200
    (repo / "scale" / "model.toml").write_text("[limits]\nmax_body_bytes = 10\n")
    with pytest.raises(ModelConfigError, match="max_body_bytes"):
        read_model_config(repo / "scale")


async def test_tfserving_routes_share_the_body_limit(scale: Env) -> None:
    repo, settings_for, app_client = scale
    async with app_client(settings_for(repo, limits={"max_body_bytes": 2048})) as client:
        rows = orjson.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 200})
        response = await client.post("/v1/models/scale:predict", content=rows)
        assert response.status_code == 413


# -- units ----------------------------------------------------------------------------------


async def _run(app: Any, scope: Scope, chunks: list[bytes]) -> tuple[int, bytes]:
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    pending.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_the_body_limit_alone() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # what the dispatcher does (the declared length), then a handler (read_body)
        scope[BODY_LIMIT] = 10
        try:
            refusal = declared_refusal(scope, 10)
            if refusal is not None:
                raise refusal
            await read_body(Request(scope, receive))
        except ShipyardError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def scope(length: str | None) -> Scope:
        headers = [] if length is None else [(b"content-length", length.encode())]
        return {"type": "http", "method": "POST", "path": "/x", "headers": headers}

    assert await _run(app, scope("5"), [b"12345"]) == (200, b"ok")
    status, body = await _run(app, scope("11"), [b"x" * 11])
    assert status == 413 and b"(11 bytes)" in body
    assert (await _run(app, scope("ten"), [b"x"]))[0] == 400
    assert (await _run(app, scope(None), [b"x" * 6, b"x" * 6]))[0] == 413


def test_decoder_limits_directly() -> None:
    tight = DecodeLimits(max_tensor_elements=10, max_request_elements=15, max_bytes_element=3)
    with pytest.raises(RequestTooLarge, match="max_tensor_elements"):
        decode_request(tensor_doc(shape=[0, 11], data=[]), limits=tight)
    with pytest.raises(RequestTooLarge, match="max_bytes_element"):
        decode_request(tensor_doc(datatype="BYTES", shape=[1], data=["abcd"]), limits=tight)
    decode_request(tensor_doc(datatype="BYTES", shape=[1], data=["abc"]), limits=tight)
    with pytest.raises(ProtocolError, match="at most 32"):
        decode_request(tensor_doc(shape=[1] * 40, data=[1.0]))
    with pytest.raises(ProtocolError, match="too large"):
        decode_request(tensor_doc(shape=[2**40, 2**40, 0], data=[]))
    with pytest.raises(ProtocolError, match="range of FP16"):
        decode_request(tensor_doc(datatype="FP16", shape=[1], data=[1e10]))
    with pytest.raises(ProtocolError, match="max_json_depth"):
        check_json_depth({"a": [[[[1]]]]}, DecodeLimits(max_json_depth=4), what="doc")
    check_json_depth({"a": [[[1]]]}, DecodeLimits(max_json_depth=4), what="doc")


def test_output_size_counts_strings() -> None:
    strings = np.array(["x" * 100] * 10, dtype=object)
    check_output_size({"s": strings}, limit=1040, model="m")
    with pytest.raises(OutputTooLarge, match="max_output_bytes"):
        check_output_size({"s": strings}, limit=1039, model="m")
    with pytest.raises(OutputTooLarge):
        check_output_size({"a": np.zeros(300, np.float32)}, limit=1024, model="m")
