"""V2 codec: every datatype both ways (JSON and binary), and every lie a body can tell."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from tests.codecs.samples import sample

from shipyard.codecs import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.tensors import DATATYPES, datatype_of
from shipyard.package.tensorspec import TensorSpec


def request_doc(**tensor: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", **tensor}]})


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert [str(v) for v in got.flat] == [str(v) for v in want.flat]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_request_round_trip(datatype: str, binary: bool) -> None:
    tensor = sample(datatype)
    body, header_length = encode_request(
        {"x": tensor}, binary_inputs=binary, request_id="r1", outputs=["y"]
    )
    assert (header_length is not None) == binary
    request = decode_request(body, header_length=header_length)
    assert request.id == "r1" and request.output_names == ["y"]
    got = request.inputs["x"]
    if datatype == "BYTES" and binary:
        assert [v.decode() for v in got.flat] == list(tensor.flat)
    else:
        assert_same(got, tensor)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_response_round_trip(datatype: str, binary: bool) -> None:
    tensor = sample(datatype)
    request = InferenceRequest(inputs={}, parameters={"binary_data_output": binary})
    response = InferenceResponse("m", "3", {"out": tensor}, id="abc")
    body, header_length = encode_response(response, request=request)
    assert (header_length is not None) == binary
    decoded = decode_response(body, header_length=header_length)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "abc")
    got = decoded.outputs["out"]
    if datatype == "BYTES" and binary:
        got = np.array([v.decode() for v in got.flat], dtype=object).reshape(got.shape)
    assert_same(got, tensor)


def test_binary_inputs_are_zero_copy_views_of_the_body() -> None:
    tensor = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, header_length = encode_request({"x": tensor}, binary_inputs=True)
    got = decode_request(body, header_length=header_length).inputs["x"]
    assert not got.flags.owndata and not got.flags.writeable
    np.testing.assert_array_equal(got, tensor)


def test_nested_and_flat_json_data_are_the_same() -> None:
    nested = decode_request(request_doc(datatype="INT32", shape=[2, 2], data=[[1, 2], [3, 4]]))
    flat = decode_request(request_doc(datatype="INT32", shape=[2, 2], data=[1, 2, 3, 4]))
    assert_same(nested.inputs["x"], flat.inputs["x"])
    assert nested.inputs["x"].dtype == np.int32


def test_spec_example_parses() -> None:
    body = (
        b'{"id":"42","inputs":[{"name":"input0","shape":[2,2],"datatype":"UINT32",'
        b'"data":[1,2,3,4]},{"name":"input1","shape":[3],"datatype":"BOOL",'
        b'"data":[true,false,true]}],"outputs":[{"name":"output0"}]}'
    )
    request = decode_request(body)
    assert request.id == "42" and request.output_names == ["output0"]
    assert request.inputs["input0"].dtype == np.uint32
    assert request.inputs["input1"].tolist() == [True, False, True]


def test_mixed_json_and_binary_inputs_in_one_request() -> None:
    blob = np.arange(4, dtype="<i8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]},
                {
                    "name": "b",
                    "datatype": "INT64",
                    "shape": [4],
                    "parameters": {"binary_data_size": 32},
                },
            ]
        }
    )
    request = decode_request(header + blob, header_length=len(header))
    assert request.inputs["a"].tolist() == [1.5, 2.5]
    assert request.inputs["b"].tolist() == [0, 1, 2, 3]


def test_per_output_binary_choice_overrides_the_request_default() -> None:
    request = InferenceRequest(
        inputs={},
        outputs=[RequestedOutput("a", {"binary_data": False}), RequestedOutput("b")],
        parameters={"binary_data_output": True},
    )
    response = InferenceResponse("m", "1", {"a": np.ones(2, np.float32), "b": np.zeros(3, np.int8)})
    body, header_length = encode_response(response, request=request)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["outputs"][0]["data"] == [1.0, 1.0]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 3}
    assert body[header_length:] == b"\x00\x00\x00"


def test_json_only_response_has_no_header_length_and_echoes_nothing_unasked() -> None:
    body, header_length = encode_response(InferenceResponse("m", None, {"a": np.ones(1)}))
    doc = orjson.loads(body)
    assert header_length is None
    assert doc == {
        "model_name": "m",
        "outputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]}],
    }


BAD_JSON_REQUESTS = {
    "not json": b"{nope",
    "not an object": b"[1, 2]",
    "no inputs": b'{"inputs": []}',
    "input not object": b'{"inputs": [3]}',
    "no name": request_doc(datatype="FP32", shape=[1], data=[1.0]).replace(b'"name":"x",', b""),
    "unknown datatype": request_doc(datatype="FLOAT", shape=[1], data=[1.0]),
    "bf16": request_doc(datatype="BF16", shape=[1], data=[1.0]),
    "negative dim": request_doc(datatype="FP32", shape=[-1], data=[1.0]),
    "shape not list": request_doc(datatype="FP32", shape="1", data=[1.0]),
    "bool dim": request_doc(datatype="FP32", shape=[True], data=[1.0]),
    "too few elements": request_doc(datatype="FP32", shape=[2, 2], data=[1.0, 2.0, 3.0]),
    "too many elements": request_doc(datatype="FP32", shape=[1], data=[1.0, 2.0]),
    "ragged": request_doc(datatype="FP32", shape=[2, 2], data=[[1.0, 2.0], [3.0]]),
    "string as number": request_doc(datatype="FP32", shape=[1], data=["1.5"]),
    "float as int": request_doc(datatype="INT32", shape=[1], data=[1.5]),
    "int overflow": request_doc(datatype="INT8", shape=[1], data=[128]),
    "negative unsigned": request_doc(datatype="UINT16", shape=[1], data=[-1]),
    "huge int": b'{"inputs":[{"name":"x","datatype":"UINT64","shape":[1],'
    b'"data":[18446744073709551616]}]}',
    "infinity": b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":[1e400]}]}',
    "bool from 2": request_doc(datatype="BOOL", shape=[1], data=[2]),
    "number as bytes": request_doc(datatype="BYTES", shape=[1], data=[5]),
    "null data": request_doc(datatype="FP32", shape=[1], data=[None]),
    "no data": request_doc(datatype="FP32", shape=[1]),
    "duplicate input": orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}] * 2}
    ),
    "id not string": orjson.dumps(
        {"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    ),
    "outputs not list": orjson.dumps(
        {"outputs": {}, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    ),
    "binary_data not bool": orjson.dumps(
        {
            "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}],
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        }
    ),
    "parameters not object": request_doc(datatype="FP32", shape=[1], data=[1.0], parameters=[]),
    "binary size without header": request_doc(
        datatype="FP32", shape=[1], parameters={"binary_data_size": 4}
    ),
    "shared memory": request_doc(
        datatype="FP32", shape=[1], parameters={"shared_memory_region": "r"}
    ),
}


@pytest.mark.parametrize("body", list(BAD_JSON_REQUESTS.values()), ids=list(BAD_JSON_REQUESTS))
def test_malformed_json_requests_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(body)
    assert info.value.status == 400


def binary_request(
    size: int, *, shape: list[int], datatype: str = "FP32", extra: Any = None
) -> tuple[bytes, int]:
    params: dict[str, Any] = {"binary_data_size": size}
    tensor: dict[str, Any] = {
        "name": "x",
        "datatype": datatype,
        "shape": shape,
        "parameters": params,
    }
    if extra:
        tensor.update(extra)
    header = orjson.dumps({"inputs": [tensor]})
    return header, len(header)


@pytest.mark.parametrize(
    ("claimed", "shape", "payload"),
    [
        (8, [3], b"\x00" * 8),  # shape needs 12 bytes
        (16, [4], b"\x00" * 12),  # claims more than the body holds
        (12, [3], b"\x00" * 16),  # body carries 4 bytes nobody claimed
        (4, [1], b""),  # nothing after the header
    ],
    ids=["size-vs-shape", "past-end", "trailing-bytes", "empty"],
)
def test_binary_size_lies_are_protocol_errors(
    claimed: int, shape: list[int], payload: bytes
) -> None:
    header, length = binary_request(claimed, shape=shape)
    with pytest.raises(ProtocolError):
        decode_request(header + payload, header_length=length)


def test_header_length_must_fit_the_body_and_not_be_zero() -> None:
    header, length = binary_request(4, shape=[1])
    body = header + b"\x00" * 4
    for bad in (0, len(body) + 1, length - 1):
        with pytest.raises(ProtocolError):
            decode_request(body, header_length=bad)


def test_binary_input_with_json_data_too_is_refused() -> None:
    header, length = binary_request(4, shape=[1], extra={"data": [1.0]})
    with pytest.raises(ProtocolError, match="both"):
        decode_request(header + b"\x00" * 4, header_length=length)


def test_binary_bool_must_be_zero_or_one() -> None:
    header, length = binary_request(2, shape=[2], datatype="BOOL")
    assert decode_request(header + b"\x01\x00", header_length=length).inputs["x"].tolist() == [
        True,
        False,
    ]
    with pytest.raises(ProtocolError, match="0 or 1"):
        decode_request(header + b"\x01\x02", header_length=length)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("<I", 5) + b"abc",  # element runs past the end
        struct.pack("<I", 1) + b"a" + b"\x00\x00",  # a truncated length prefix
        struct.pack("<I", 1) + b"a",  # one element, shape wants two
        struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + struct.pack("<I", 0),  # three
    ],
    ids=["past-end", "cut-prefix", "too-few", "too-many"],
)
def test_binary_bytes_length_prefix_lies_are_protocol_errors(payload: bytes) -> None:
    header, length = binary_request(len(payload), shape=[2], datatype="BYTES")
    with pytest.raises(ProtocolError):
        decode_request(header + payload, header_length=length)


def test_empty_tensors_decode() -> None:
    request = decode_request(request_doc(datatype="FP32", shape=[0, 4], data=[]))
    assert request.inputs["x"].shape == (0, 4) and request.inputs["x"].dtype == np.float32


def test_ints_and_floats_are_accepted_for_float_types_only_when_exact() -> None:
    request = decode_request(request_doc(datatype="FP64", shape=[3], data=[1, 2.5, -3]))
    assert request.inputs["x"].tolist() == [1.0, 2.5, -3.0]
    request = decode_request(request_doc(datatype="UINT64", shape=[1], data=[2**64 - 1]))
    assert request.inputs["x"].tolist() == [2**64 - 1]


def test_bytes_become_model_strings_only_when_utf8() -> None:
    from shipyard.errors import InputError
    from shipyard.runtime.base import check_inputs

    specs = [TensorSpec(name="x", dtype="str", shape=(-1,))]
    inputs = {"x": np.array([b"caf\xc3\xa9", "plain"], dtype=object)}
    assert check_inputs(specs, inputs)["x"].tolist() == ["café", "plain"]
    with pytest.raises(InputError, match="UTF-8"):
        check_inputs(specs, {"x": np.array([b"\xff"], dtype=object)})


def test_non_utf8_bytes_output_needs_binary() -> None:
    response = InferenceResponse("m", "1", {"out": np.array([b"\xff"], dtype=object)})
    with pytest.raises(ProtocolError, match="binary_data"):
        encode_response(response)
    request = InferenceRequest(inputs={}, parameters={"binary_data_output": True})
    body, length = encode_response(response, request=request)
    assert body[length:] == struct.pack("<I", 1) + b"\xff"


def test_datatype_of_arrays() -> None:
    assert datatype_of(np.zeros(1, np.float16)) == "FP16"
    assert datatype_of(np.array(["a"])) == "BYTES"
    assert datatype_of(np.array([b"a"], dtype=object)) == "BYTES"
    with pytest.raises(ProtocolError):
        datatype_of(np.zeros(1, np.complex64))


@pytest.mark.parametrize("extra", [0, 1])
def test_json_depth_is_refused_one_level_past_the_limit(extra: int) -> None:
    """The byte count that skips the walk never lets a request one level too deep through."""
    from shipyard.codecs.limits import DecodeLimits

    limit = 8
    # the request object is level 1, "parameters" 2, and each {"a": ...} one more
    levels = limit - 2 + extra
    params = b'{"a":' * levels + b"1" + b"}" * levels
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],'
    body += b'"parameters":' + params + b"}"
    limits = DecodeLimits(max_json_depth=limit)
    if extra:
        with pytest.raises(ProtocolError, match="nests deeper than 8 levels"):
            decode_request(body, limits=limits)
        with pytest.raises(ProtocolError, match="nests deeper"):  # binary framing: same check
            decode_request(body + b"\0", header_length=len(body), limits=limits)
    else:
        assert decode_request(body, limits=limits).inputs["x"].tolist() == [1.0]


def test_datatype_of_answers_the_same_from_its_cache() -> None:
    for dtype in (np.float32, np.int64, np.dtype(">f4"), np.bool_, np.float16):
        array = np.zeros(2, dtype=dtype)
        assert datatype_of(array) == datatype_of(array)
    assert datatype_of(np.zeros(1, np.float32)) == "FP32"
    assert datatype_of(np.zeros(1, np.dtype(">i4"))) == "INT32"
    assert datatype_of(np.array(["a"])) == "BYTES"
    with pytest.raises(ProtocolError, match="no V2 datatype"):
        datatype_of(np.zeros(1, "datetime64[ns]"))
