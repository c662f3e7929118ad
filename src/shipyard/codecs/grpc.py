"""V2 gRPC messages to and from `InferenceRequest`/`InferenceResponse`, strictly checked.

Inputs arrive either all in `raw_input_contents` (one entry per input, in order, in the
binary tensor layout; numeric tensors become zero-copy numpy views of those bytes) or each
in its typed `contents` field: `int_contents` for INT8/16/32, `uint_contents` for
UINT8/16/32, and so on; FP16 has no typed field and must be raw. Outputs always go back as
`raw_output_contents`, as Triton does, which every client reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format

from shipyard.codecs.binary import WIRE_DTYPES, array_from_bytes, array_to_bytes
from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_elements,
    check_request_elements,
)
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.codecs.tensors import check_datatype, check_shape, datatype_of
from shipyard.codecs.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestedOutput,
    schedule_parameters,
)
from shipyard.package.dtypes import BY_V2

_INT64_MAX = 2**63 - 1


def decode_infer_request(
    message: pb.ModelInferRequest, *, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferenceRequest:
    """The request's tensors as numpy arrays; every protocol mistake is a ProtocolError (400).

    Sizes are checked against `limits` before any array is built (RequestTooLarge, 413).
    """
    if not message.inputs:
        raise ProtocolError("ModelInferRequest needs at least one entry in inputs")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries but there are {len(message.inputs)} "
            "inputs; send one entry per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    total = 0
    for position, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise ProtocolError(f"input #{position} needs a name")
        if tensor.name in inputs:
            raise ProtocolError(f"input {tensor.name!r} appears twice")
        what = f"input {tensor.name!r}"
        datatype = check_datatype(tensor.datatype, what=what)
        shape = check_shape(list(tensor.shape), what=what)
        total += check_elements(shape, limits, what=what)
        check_request_elements(total, limits)
        params = decode_parameters(tensor.parameters)
        if "shared_memory_region" in params:
            raise ProtocolError(f"{what}: shared-memory inputs are not supported; send the data")
        has_contents = bool(tensor.contents.ListFields())
        if raw:
            if has_contents:
                raise ProtocolError(
                    f"{what}: sets contents although the request uses raw_input_contents; "
                    "send every input one way"
                )
            inputs[tensor.name] = _from_raw(raw[position], datatype, shape, position, what)
        else:
            inputs[tensor.name] = _from_contents(tensor.contents, datatype, shape, what)
    parameters = decode_parameters(message.parameters)
    timeout_us, priority = schedule_parameters(parameters)
    return InferenceRequest(
        inputs=inputs,
        outputs=[RequestedOutput(o.name, decode_parameters(o.parameters)) for o in message.outputs],
        id=message.id or None,
        parameters=parameters,
        timeout_us=timeout_us,
        priority=priority,
    )


def encode_infer_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """Outputs in order, each as one `raw_output_contents` entry."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    encode_parameters(response.parameters, message.parameters)
    for name, array in response.outputs.items():
        datatype = datatype_of(array)
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(array_to_bytes(array, datatype=datatype))
    return message


def decode_parameters(params: Mapping[str, pb.InferParameter]) -> Parameters:
    """An `InferParameter` map as plain values (unset oneofs are left out)."""
    decoded: Parameters = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(param, choice)
    return decoded


def encode_parameters(params: Parameters, into: Any) -> None:
    """Fill an `InferParameter` map field from plain values (bool before int: bool is an int)."""
    for key, value in params.items():
        param = into[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def check_load_parameters(params: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    """Reject Triton's config/file overrides, as the REST load endpoint does."""
    overrides = sorted(k for k in params if k == "config" or k.startswith("file:"))
    if overrides:
        raise ProtocolError(
            f"load parameters {overrides} are not supported; put a model.toml and the "
            "package versions in the repository folder instead"
        )


def statistics_message(doc: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """Triton's statistics JSON (`DataPlane.statistics`) as its protobuf message."""
    message = pb.ModelStatisticsResponse()
    json_format.ParseDict(doc, message)
    return message


def config_message(doc: dict[str, Any]) -> pb.ModelConfigResponse:
    """Triton's JSON model configuration (`DataPlane.model_config`) as ModelConfigResponse."""
    message = pb.ModelConfigResponse()
    json_format.ParseDict(doc, message.config)
    return message


def _from_raw(
    data: bytes, datatype: str, shape: tuple[int, ...], position: int, what: str
) -> np.ndarray:
    if datatype != "BYTES":
        expected = math.prod(shape) * WIRE_DTYPES[datatype].itemsize
        if len(data) != expected:
            raise ProtocolError(
                f"{what}: raw_input_contents[{position}] has {len(data)} bytes but {datatype} "
                f"shape {list(shape)} needs exactly {expected}"
            )
    return array_from_bytes(memoryview(data), datatype=datatype, shape=shape, what=what)


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], what: str
) -> np.ndarray:
    row = BY_V2[datatype]
    field, wire = row.contents, row.contents_numpy
    if field is None or wire is None:
        raise ProtocolError(
            f"{what}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    others = sorted(f.name for f, _ in contents.ListFields() if f.name != field)
    if others:
        raise ProtocolError(f"{what}: {datatype} data goes in contents.{field}, not in {others}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(
            f"{what}: contents.{field} has {len(values)} elements but shape {list(shape)} "
            f"needs {count}"
        )
    target = row.numpy
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    array = np.fromiter(values, dtype=wire, count=count)
    if target.itemsize < wire.itemsize and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(
                f"{what}: values outside the range of {datatype} [{info.min}, {info.max}]"
            )
    return array.astype(target, copy=False).reshape(shape)
