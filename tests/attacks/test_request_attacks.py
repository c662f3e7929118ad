"""Hostile requests against a real server: each gets a 4xx, and the server keeps serving.

Shape bombs, deeply nested JSON, lying binary sizes, huge BYTES elements, gzip and deflate
bombs and lying Content-Length headers, sent over real sockets to uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from tests.conftest import make_affine_onnx

import shipyard
from shipyard.codecs import encode_request
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings

URL = "/v2/models/affine/infer"
X = np.arange(8, dtype=np.float32).reshape(2, 4)
GOOD = encode_request({"x": X})[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("attacks") / "models"
    shipyard.pack(make_affine_onnx(), name="affine", repo=repo)
    settings = load_settings(repository=repo, port=0, poll_interval_s=0, warmup=False)
    with start_in_thread(settings=settings) as running:
        yield running
    assert not running.running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
    _still_serving(server)


def _still_serving(server: RunningServer) -> None:
    assert server.running
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post(URL, content=GOOD)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [2, 3]


def _doc(**tensor: Any) -> bytes:
    base: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
    base.update(tensor)
    return orjson.dumps({"inputs": [base]})


def _refused(response: httpx.Response, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return str(message)


SHAPE_BOMBS = {
    "1e12 elements": _doc(shape=[10**12], data=[1.0]),
    "1e12 x 4": _doc(shape=[10**12, 4], data=[1.0, 2.0, 3.0, 4.0]),
    "product overflows int64": _doc(shape=[2**40, 2**40, 2**40], data=[1.0]),
    "zero-size with huge dims": _doc(shape=[0, 2**62, 2**62], data=[]),
    "dim past uint64": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[99999999999999999999999],'
    b'"data":[1]}]}',
    "100 dimensions": _doc(shape=[1] * 100, data=[1.0]),
    "BYTES 1e12": _doc(datatype="BYTES", shape=[10**12], data=["a"]),
}


@pytest.mark.parametrize("case", list(SHAPE_BOMBS), ids=list(SHAPE_BOMBS))
def test_shape_bombs(client: httpx.Client, case: str) -> None:
    _refused(client.post(URL, content=SHAPE_BOMBS[case]), 400, 413)


def test_binary_shape_bomb(client: httpx.Client) -> None:
    header = _doc(shape=[10**12, 4], parameters={"binary_data_size": 16})
    response = client.post(
        URL,
        content=header + b"\0" * 16,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    _refused(response, 400, 413)


def test_deeply_nested_json(client: httpx.Client) -> None:
    depth = 100_000
    _refused(client.post(URL, content=b"[" * depth + b"]" * depth), 400)
    nested = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":'
    nested += b"[" * depth + b"1" + b"]" * depth + b"}]}"
    _refused(client.post(URL, content=nested), 400)
    params = b'{"inputs":[],"parameters":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    _refused(client.post(URL, content=params), 400)
    message = _refused(client.post(URL, content=_doc(shape=[1] * 40, data=[[1.0]])), 400)
    assert "dimensions" in message or "depth" in message


def test_lying_binary_sizes(client: httpx.Client) -> None:
    body, length = encode_request({"x": X}, binary_inputs=True)
    assert length is not None
    cases = [
        (body[:-8], length),  # binary_data_size past the end of the body
        (body + b"\0" * 8, length),  # trailing bytes no size accounts for
        (body, len(body) + 100),  # header length past the body
        (body, 0),
        (body, 3),  # header length inside the JSON
    ]
    for content, header_length in cases:
        response = client.post(
            URL, content=content, headers={"Inference-Header-Content-Length": str(header_length)}
        )
        _refused(response, 400)
    for size in (-1, 2**63, "16"):
        header = _doc(shape=[1, 4], parameters={"binary_data_size": size})
        response = client.post(
            URL,
            content=header + b"\0" * 16,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        _refused(response, 400)
    lying_bytes = _doc(datatype="BYTES", shape=[1], parameters={"binary_data_size": 8})
    response = client.post(
        URL,
        content=lying_bytes + struct.pack("<I", 0xFFFFFFFF) + b"abcd",
        headers={"Inference-Header-Content-Length": str(len(lying_bytes))},
    )
    assert "claims" in _refused(response, 400)


def test_huge_bytes_elements(client: httpx.Client) -> None:
    big = 2 * 1024 * 1024  # over the 1 MiB default max_bytes_element
    message = _refused(
        client.post(URL, content=_doc(datatype="BYTES", shape=[1], data=["a" * big])), 413
    )
    assert "max_bytes_element" in message
    header = _doc(datatype="BYTES", shape=[1], parameters={"binary_data_size": 4 + big})
    response = client.post(
        URL,
        content=header + struct.pack("<I", big) + b"a" * big,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert "max_bytes_element" in _refused(response, 413)


def _bomb(total: int, *, gzip_format: bool) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if gzip_format else 15)
    zeros = b"\0" * (1 << 20)
    parts = [packer.compress(zeros) for _ in range(total >> 20)]
    return b"".join([*parts, packer.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bombs(client: httpx.Client, encoding: str) -> None:
    bomb = _bomb(256 << 20, gzip_format=encoding == "gzip")  # 256 MiB of zeros, ~250 KiB sent
    assert len(bomb) < 1 << 20
    response = client.post(URL, content=bomb, headers={"Content-Encoding": encoding})
    assert "limit" in _refused(response, 413)


def _raw_exchange(server: RunningServer, request: bytes, *, timeout: float = 10) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_lying_content_length(server: RunningServer) -> None:
    huge = (
        b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: 100000000000\r\n\r\n" + GOOD
    )
    reply = _raw_exchange(server, huge)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    short = (
        b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: 10\r\n\r\n" + GOOD
    )
    reply = _raw_exchange(server, short)
    assert reply.startswith(b"HTTP/1.1 4"), reply[:200]
    _still_serving(server)


def test_many_attacks_in_a_row_leave_it_healthy(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body in [*SHAPE_BOMBS.values(), b"[" * 5000, b"\xff\xfe", b""] * 5:
            assert 400 <= http.post(URL, content=body).status_code < 500
        assert http.get("/v2/health/ready").status_code == 200
    _still_serving(server)


def test_tfserving_predict_attacks(client: httpx.Client) -> None:
    url = "/v1/models/affine:predict"
    assert client.post(url, content=b'{"instances": [[1, 2, 3, 4]]}').status_code == 200
    depth = 100_000
    _refused(client.post(url, content=b'{"instances":' + b"[" * depth + b"]" * depth + b"}"), 400)
    bomb = _bomb(256 << 20, gzip_format=True)
    _refused(client.post(url, content=bomb, headers={"Content-Encoding": "gzip"}), 413)
    _refused(client.post(url, content=b'{"inputs": {"x": "' + b"a" * (2 << 20) + b'"}}'), 400, 413)
