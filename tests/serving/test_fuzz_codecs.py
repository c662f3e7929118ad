"""Property-based fuzzing: the V2 decoders and the HTTP app never fail with anything but a 4xx.

Arbitrary bytes, arbitrary JSON, V2-shaped documents with wild shapes, datatypes and data,
and binary bodies with lying sizes go to the decoders (only `ProtocolError` may escape) and,
in process, to the whole app with and without auth (never a 5xx). Examples are bounded and
the database is off, so the module runs in seconds and leaves nothing behind.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from shipyard.codecs.binary import WIRE_DTYPES, array_from_bytes
from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import DecodeLimits
from shipyard.codecs.tensors import DATATYPES
from shipyard.codecs.v2 import decode_request
from shipyard.security.tokens import TokenStore
from shipyard.serving.lifecycle import Server
from shipyard.serving.settings import ServerSettings

FUZZ = settings(
    max_examples=200,
    deadline=2000,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INTERESTING_FIRST = ["FP32", "FP16", "INT64", "BYTES", "UINT64", "BOOL", "INT8", "FP64"]
INTERESTING_FIRST += sorted(DATATYPES - set(INTERESTING_FIRST))
SMALL = DecodeLimits(max_tensor_elements=4096, max_request_elements=8192, max_bytes_element=64)

names = st.sampled_from(["x", "y", "in_FP32", "in_BYTES", "", "é", "x" * 70])
datatypes = st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=6), st.integers())
dims = st.one_of(
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=-3, max_value=2**64 - 1),
    st.sampled_from([10**12, 2**31, 2**63 - 1, 2**64 - 1]),
)
shapes = st.one_of(
    st.lists(dims, max_size=5),
    st.lists(st.integers(0, 1), min_size=30, max_size=80),
    st.just(None),
    st.text(max_size=3),
    st.lists(st.one_of(st.floats(allow_nan=False), st.booleans(), st.text(max_size=2)), max_size=3),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
tensor_data = st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=12),
    st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=12),
    st.lists(st.lists(scalars, max_size=4), max_size=4),
    st.lists(st.text(max_size=5), max_size=8),
    json_values,
)
parameters = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region", "other"]),
        scalars,
        max_size=3,
    ),
    scalars,
)


def _maybe_json(value: Any) -> bytes:
    # the strategies keep integers in orjson's range (-2**63 .. 2**64-1), so this rarely falls back
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # ints past 64 bits
        return b"{}"


numbers = st.one_of(  # extremes first: Hypothesis favours the first branch
    st.sampled_from([65520.0, 1e300, -1e39, 2.0**64, 0.5]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
)


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def consistent_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """Shape and data that agree in count, so decoding gets past the count check."""
    # (rare branches on the high value: Hypothesis leans towards small integers)
    if draw(st.integers(0, 7)) == 7:  # ranks around numpy's limit of 64
        shape = draw(st.lists(st.just(1), min_size=60, max_size=70))
    else:
        shape = draw(st.lists(st.integers(0, 3), max_size=4))
    count = math.prod(shape)
    datatype = draw(st.sampled_from(INTERESTING_FIRST))
    if draw(st.integers(0, 2)) == 2:
        element = numbers  # any number for any numeric type: ranges, kinds, overflow
    elif datatype == "BYTES":
        element = st.text(max_size=80)
    elif datatype == "BOOL":
        element = st.booleans()
    elif datatype.startswith(("INT", "UINT")):
        element = st.integers(0, 127)
    else:
        element = st.floats(-1e4, 1e4)
    data: Any = draw(st.lists(element, min_size=count, max_size=count))
    if count and draw(st.integers(0, 2)) == 2:  # nested like the shape, as clients may send it
        data = _nest(data, shape)
    name = draw(st.sampled_from(["x", "in_FP32", "in_BYTES", "x", ""]))
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


@st.composite
def v2_documents(draw: st.DrawFn) -> dict[str, Any]:
    wild = {
        "name": names,
        "datatype": datatypes,
        "shape": shapes,
        "data": tensor_data,
        "parameters": parameters,
    }
    tensors: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 9))
        if kind == 9:
            tensors.append(draw(json_values))
            continue
        tensor = draw(consistent_tensors())
        if kind >= 5:  # one field replaced by (or dropped for) something wild
            key = draw(st.sampled_from(sorted(wild)))
            if draw(st.integers(0, 4)):
                tensor[key] = draw(wild[key])
            else:
                tensor.pop(key, None)
        tensors.append(tensor)
    doc: dict[str, Any] = {"inputs": tensors}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.one_of(
                st.lists(st.fixed_dictionaries({"name": names, "parameters": parameters})),
                json_values,
            )
        )
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=5), st.integers()))
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    return doc


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    tensors = []
    for _ in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from([*sorted(WIRE_DTYPES), "BYTES"]))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = draw(st.one_of(st.integers(0, 64), st.integers(-5, 2**40), st.text(max_size=2)))
        tensors.append(
            {
                "name": draw(names),
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        )
    header = _maybe_json({"inputs": tensors})
    blob = draw(st.binary(max_size=256))
    if draw(st.booleans()):  # well-formed BYTES elements, some with lying lengths
        items = draw(st.lists(st.binary(max_size=8), max_size=4))
        blob = b"".join(struct.pack("<I", len(i) + draw(st.integers(0, 1))) + i for i in items)
    length = draw(
        st.one_of(st.just(len(header)), st.integers(0, len(header) + len(blob) + 2), st.none())
    )
    return header + blob, length


def _decodes_or_protocol_error(body: bytes, header_length: int | None = None) -> None:
    try:
        request = decode_request(body, header_length=header_length, limits=SMALL)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray)
        assert array.size <= SMALL.max_tensor_elements


@FUZZ
@given(body=st.binary(max_size=512), header_length=st.one_of(st.none(), st.integers(-2, 600)))
def test_arbitrary_bytes(body: bytes, header_length: int | None) -> None:
    _decodes_or_protocol_error(body, header_length)


@FUZZ
@given(value=json_values)
def test_arbitrary_json(value: Any) -> None:
    _decodes_or_protocol_error(_maybe_json(value))


@FUZZ
@given(doc=v2_documents())
def test_v2_shaped_documents(doc: dict[str, Any]) -> None:
    _decodes_or_protocol_error(_maybe_json(doc))


@FUZZ
@given(case=binary_bodies())
def test_binary_extension_bodies(case: tuple[bytes, int | None]) -> None:
    _decodes_or_protocol_error(*case)


@FUZZ
@given(
    datatype=st.sampled_from([*sorted(WIRE_DTYPES), "BYTES"]),
    shape=st.lists(st.integers(0, 6), max_size=4),
    data=st.binary(max_size=200),
)
def test_single_binary_tensors(datatype: str, shape: list[int], data: bytes) -> None:
    try:
        array = array_from_bytes(
            memoryview(data), datatype=datatype, shape=tuple(shape), what="t", limits=SMALL
        )
    except ProtocolError:
        return
    assert array.shape == tuple(shape) and array.size == math.prod(shape)


# -- the HTTP app, in process ------------------------------------------------------------

ROUTES = [
    ("POST", "/v2/models/scale/infer"),
    ("POST", "/v2/models/scale/versions/1/infer"),
    ("POST", "/v2/models/scale/versions/x/infer"),
    ("POST", "/v2/models/nope/infer"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/scale/load"),
    ("GET", "/v2/models/scale"),
    ("GET", "/v2/models/scale/versions/0"),
    ("POST", "/v1/models/scale:predict"),
    ("POST", "/v1/models/scale:classify"),
    ("POST", "/v1/models/scale:regress"),
    ("GET", "/v1/models/scale/versions/1/metadata"),
    ("GET", "/v1/models/scale:bogus"),
    ("GET", "/v2/health/ready"),
]
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    st.integers(-5, 10**6).map(str),
)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    method, path = draw(st.sampled_from(ROUTES))
    kind = draw(st.integers(0, 3))
    headers: dict[str, str] = {}
    if kind == 0:
        body = draw(st.binary(max_size=300))
    elif kind == 1:
        body = _maybe_json(draw(v2_documents()))
    elif kind == 2:
        body, length = draw(binary_bodies())
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(length)
    else:
        body = _maybe_json(draw(json_values))
    if draw(st.integers(0, 3)) == 0:
        headers["Inference-Header-Content-Length"] = draw(header_values)
    if draw(st.integers(0, 4)) == 0:
        encoding = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "GZIP"]))
        headers["Content-Encoding"] = encoding
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "x"]))
    if draw(st.booleans()):
        headers["Authorization"] = draw(
            st.one_of(st.just("Bearer "), header_values.map(lambda v: f"Bearer {v}"), header_values)
        )
    return method, path, body, headers


@pytest.fixture(params=["open", "auth"])
def client(
    request: pytest.FixtureRequest,
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tmp_path: Path,
) -> Iterator[TestClient]:
    pack()
    extra: dict[str, Any] = {}
    if request.param == "auth":
        store = TokenStore(tmp_path / "tokens.json")
        store.create("fuzzer", ["infer:scale"])
        extra["auth"] = store.path
    settings = settings_for(repo, limits={"max_body_bytes": 4096}, **extra)
    with TestClient(Server(settings).app, raise_server_exceptions=True) as test_client:
        yield test_client


def test_the_app_never_answers_5xx(client: TestClient) -> None:
    @FUZZ
    @given(case=http_requests())
    def run(case: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = case
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code < 500, (path, headers, body[:200], response.text)
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str)

    run()
    assert client.get("/v2/health/ready").status_code == 200
