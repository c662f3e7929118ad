"""The V2 gRPC codec on its own: typed contents, raw contents and every lie a message can tell."""

from __future__ import annotations

import numpy as np
import pytest
from tests.codecs.samples import sample

from shipyard.codecs import grpc as grpc_codec
from shipyard.codecs.errors import ProtocolError, RequestTooLarge
from shipyard.codecs.limits import DecodeLimits
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.codecs.types import InferenceResponse
from shipyard.package.dtypes import BY_V2, DTYPES


def contents_of(datatype: str, value: np.ndarray) -> pb.InferTensorContents:
    flat = value.reshape(-1).tolist()
    field = BY_V2[datatype].contents
    assert field is not None
    if datatype == "BYTES":
        flat = [v.encode() for v in flat]
    return pb.InferTensorContents(**{field: flat})


@pytest.mark.parametrize("datatype", [d.v2 for d in DTYPES if d.contents is not None])
def test_decode_typed_contents(datatype: str) -> None:
    value = sample(datatype)
    request = pb.ModelInferRequest(
        model_name="m", id="r", parameters={"p": pb.InferParameter(int64_param=3)}
    )
    request.inputs.add(
        name="t", datatype=datatype, shape=value.shape, contents=contents_of(datatype, value)
    )
    request.outputs.add(name="o", parameters={"flag": pb.InferParameter(bool_param=True)})
    decoded = grpc_codec.decode_infer_request(request)
    got = decoded.inputs["t"]
    assert (decoded.id, decoded.parameters, decoded.output_names) == ("r", {"p": 3}, ["o"])
    assert decoded.outputs[0].parameters == {"flag": True}
    if datatype == "BYTES":
        assert got.dtype == object and got.tolist() == [
            [v.encode() for v in row] for row in value.tolist()
        ]
    else:
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def _request(
    *tensors: tuple[str, list[int], pb.InferTensorContents | None], raw: list[bytes] | None = None
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=raw or [])
    for i, (datatype, shape, contents) in enumerate(tensors):
        tensor = request.inputs.add(name=f"t{i}", datatype=datatype, shape=shape)
        if contents is not None:
            tensor.contents.CopyFrom(contents)
    return request


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (
            _request(("FP16", [1], pb.InferTensorContents(fp32_contents=[1.0]))),
            "raw_input_contents",
        ),
        (_request(("INT8", [1], pb.InferTensorContents(int_contents=[300]))), "range of INT8"),
        (
            _request(("UINT16", [1], pb.InferTensorContents(uint_contents=[70000]))),
            "range of UINT16",
        ),
        (_request(("FP32", [2], pb.InferTensorContents(fp32_contents=[1.0]))), "needs 2"),
        (_request(("FP32", [1], pb.InferTensorContents(fp64_contents=[1.0]))), "fp32_contents"),
        (_request(("FP32", [2], None), raw=[b"\0" * 4]), "needs exactly 8"),
        (
            _request(("FP32", [1], None), ("FP32", [1], None), raw=[b"\0" * 4]),
            "one entry per input",
        ),
        (
            _request(("FP32", [1], pb.InferTensorContents(fp32_contents=[1.0])), raw=[b"\0" * 4]),
            "send every input one way",
        ),
        (_request(("FP32", [-1], None)), "non-negative"),
        (_request(("STRING", [1], None)), "not supported"),
        (_request(), "at least one"),
        (_request(("BOOL", [1], None), raw=[b"\x02"]), "0 or 1"),
    ],
)
def test_decode_rejects(request_: pb.ModelInferRequest, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        grpc_codec.decode_infer_request(request_)
    assert fragment in str(info.value)


def test_decode_applies_size_limits_before_building_arrays() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[10**12])
    message.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(RequestTooLarge, match="max_tensor_elements"):
        grpc_codec.decode_infer_request(message, limits=DecodeLimits())
    small = DecodeLimits(max_tensor_elements=100, max_request_elements=150)
    message = pb.ModelInferRequest(model_name="m")
    for name in ("a", "b"):
        message.inputs.add(name=name, datatype="FP32", shape=[100])
        message.raw_input_contents.append(b"\x00" * 400)
    with pytest.raises(RequestTooLarge, match="per request"):
        grpc_codec.decode_infer_request(message, limits=small)


@pytest.mark.parametrize("datatype", [d.v2 for d in DTYPES])
def test_raw_contents_round_trip(datatype: str) -> None:
    """A response's raw outputs, sent back as raw inputs, decode to the same tensors."""
    value = sample(datatype)
    response = grpc_codec.encode_infer_response(InferenceResponse("m", "1", {"t": value}))
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("t", datatype, [2, 3])
    ]
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=response.raw_output_contents)
    request.inputs.add(name="t", datatype=datatype, shape=value.shape)
    got = grpc_codec.decode_infer_request(request).inputs["t"]
    if datatype == "BYTES":
        assert got.tolist() == [[v.encode() for v in row] for row in value.tolist()]
    else:
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)
