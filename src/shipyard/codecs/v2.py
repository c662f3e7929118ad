"""Open Inference Protocol (KServe V2) bodies: JSON tensors and the binary tensor extension.

Server side: `decode_request` (body [+ Inference-Header-Content-Length] -> numpy) and
`encode_response` (numpy -> body [+ header length]). Client side, for tests, benchmarks and
`shipyard predict --input request.json`: `encode_request` and `decode_response`.

Binary extension: the body is the JSON header followed by each binary tensor's bytes, in
the order the tensors appear in the header; `binary_data_size` on a tensor gives its size.
The sizes must add up to the body exactly. Outputs are binary when the request sets
`"binary_data_output": true` unless an output overrides it with `"binary_data"`.

Local inference without a server::

    request = decode_request(Path("request.json").read_bytes())
    response = predict(model, request)
    body, header_length = encode_response(response, request=request)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from shipyard.codecs.binary import array_from_bytes, array_to_bytes
from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.jsonbody import load_object
from shipyard.codecs.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_elements,
    check_json_depth,
    check_request_elements,
)
from shipyard.codecs.tensors import (
    array_from_json,
    array_to_json,
    check_datatype,
    check_shape,
    datatype_of,
)
from shipyard.codecs.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestedOutput,
    schedule_parameters,
)

if TYPE_CHECKING:
    from shipyard.model import Model

HEADER_LENGTH = "inference-header-content-length"
_DUMP = orjson.OPT_SERIALIZE_NUMPY


def decode_request(
    body: bytes | memoryview,
    *,
    header_length: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> InferenceRequest:
    """A V2 inference request; `header_length` is the Inference-Header-Content-Length value.

    Raises ProtocolError (400) for anything malformed and its subclass RequestTooLarge (413)
    past one of `limits`, always before allocating the tensor that would break it.
    """
    view = memoryview(body)
    if header_length is None:
        header, blobs = view, view[0:0]
    else:
        if header_length == 0:
            raise ProtocolError(
                "Inference-Header-Content-Length is 0 (a raw binary request); send a JSON "
                "header with binary_data_size for each binary input instead"
            )
        if not 0 < header_length <= len(view):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(view)} bytes"
            )
        header, blobs = view[:header_length], view[header_length:]
    doc = load_object(header, what="inference request")
    text = body if header_length is None and isinstance(body, bytes) else bytes(header)
    check_json_depth(doc, limits, what="inference request", text=text)
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise ProtocolError('inference request needs "inputs": a non-empty list of tensors')
    inputs: dict[str, np.ndarray] = {}
    offset = total = 0
    for position, item in enumerate(inputs_doc):
        name, datatype, shape, params = _tensor_header(item, position=position)
        if name in inputs:
            raise ProtocolError(f"input {name!r} appears twice")
        what = f"input {name!r}"
        total += check_elements(shape, limits, what=what)
        check_request_elements(total, limits)
        size = params.get("binary_data_size")
        if "shared_memory_region" in params:
            raise ProtocolError(f"{what}: shared-memory inputs are not supported; send the data")
        if size is None:
            if "data" not in item:
                raise ProtocolError(f'{what}: needs "data" or parameters.binary_data_size')
            inputs[name] = array_from_json(
                item["data"], datatype=datatype, shape=shape, what=what, limits=limits
            )
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{what}: binary_data_size must be a non-negative integer")
        if header_length is None:
            raise ProtocolError(
                f"{what}: has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        if "data" in item:
            raise ProtocolError(f'{what}: has both "data" and binary_data_size')
        if offset + size > len(blobs):
            raise ProtocolError(
                f"{what}: binary_data_size {size} runs past the end of the body "
                f"({len(blobs) - offset} binary bytes left)"
            )
        chunk = blobs[offset : offset + size]
        offset += size
        inputs[name] = array_from_bytes(
            chunk, datatype=datatype, shape=shape, what=what, limits=limits
        )
    if offset != len(blobs):
        raise ProtocolError(
            f"the body has {len(blobs)} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    parameters = _parameters(doc.get("parameters"), what="request")
    timeout_us, priority = schedule_parameters(parameters)
    return InferenceRequest(
        inputs=inputs,
        outputs=_requested_outputs(doc.get("outputs")),
        id=_request_id(doc.get("id")),
        parameters=parameters,
        timeout_us=timeout_us,
        priority=priority,
    )


def encode_response(
    response: InferenceResponse, *, request: InferenceRequest | None = None
) -> tuple[bytes, int | None]:
    """(body, header_length): header_length is set only when some output went binary."""
    default = request.binary_outputs if request is not None else False
    choices = {o.name: o.binary for o in request.outputs} if request is not None else {}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        choice = choices.get(name)
        binary = default if choice is None else choice
        outputs.append(_tensor_entry(name, array, binary=binary, blobs=blobs))
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        doc["model_version"] = response.model_version
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    return _body(doc, blobs)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Parameters | None = None,
    binary_inputs: bool = False,
    binary_outputs: bool = False,
) -> tuple[bytes, int | None]:
    """(body, header_length) of a V2 request (header_length: Inference-Header-Content-Length)."""
    blobs: list[bytes] = []
    tensors = [
        _tensor_entry(name, np.asarray(value), binary=binary_inputs, blobs=blobs)
        for name, value in inputs.items()
    ]
    doc: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    params = dict(parameters or {})
    if binary_outputs:
        params["binary_data_output"] = True
    if params:
        doc["parameters"] = params
    if outputs:
        doc["outputs"] = [{"name": n} for n in outputs]
    return _body(doc, blobs)


def decode_response(
    body: bytes | memoryview, *, header_length: int | None = None
) -> InferenceResponse:
    """A V2 inference response (JSON or with binary outputs) as numpy arrays."""
    view = memoryview(body)
    header = view if header_length is None else view[:header_length]
    blobs = view[0:0] if header_length is None else view[header_length:]
    doc = load_object(header, what="inference response")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, item in enumerate(doc.get("outputs") or []):
        name, datatype, shape, params = _tensor_header(item, position=position, kind="output")
        size = params.get("binary_data_size")
        what = f"output {name!r}"
        if isinstance(size, int) and not isinstance(size, bool):
            chunk = blobs[offset : offset + size]
            offset += size
            outputs[name] = array_from_bytes(chunk, datatype=datatype, shape=shape, what=what)
        else:
            outputs[name] = array_from_json(
                item.get("data"), datatype=datatype, shape=shape, what=what
            )
    version = doc.get("model_version")
    return InferenceResponse(
        model_name=str(doc.get("model_name", "")),
        model_version=None if version is None else str(version),
        outputs=outputs,
        id=_request_id(doc.get("id")),
        parameters=_parameters(doc.get("parameters"), what="response"),
    )


def predict(model: Model, request: InferenceRequest) -> InferenceResponse:
    """Run a decoded request on a loaded model in this process (no server, no batching)."""
    outputs = model.infer(dict(request.inputs), request.output_names or None)
    return InferenceResponse(
        model_name=model.name, model_version=str(model.version), outputs=outputs, id=request.id
    )


def _tensor_entry(
    name: str, array: np.ndarray, *, binary: bool, blobs: list[bytes]
) -> dict[str, Any]:
    """One tensor's JSON entry; a binary tensor's bytes are appended to `blobs` instead."""
    datatype = datatype_of(array)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        blob = array_to_bytes(array, datatype=datatype)
        entry["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    else:
        entry["data"] = array_to_json(array)
    return entry


def _body(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int | None]:
    """(body, header_length): the JSON header, then the binary tensors' bytes in order."""
    head = orjson.dumps(doc, option=_DUMP)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _tensor_header(
    item: Any, *, position: int, kind: str = "input"
) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    if not isinstance(item, dict):
        raise ProtocolError(f"{kind} #{position} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f'{kind} #{position} needs a "name" string')
    what = f"{kind} {name!r}"
    datatype = check_datatype(item.get("datatype"), what=what)
    shape = check_shape(item.get("shape"), what=what)
    params = _parameters(item.get("parameters"), what=what)
    return name, datatype, shape, params


def _requested_outputs(value: Any) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError('"outputs" must be a list of {"name": ...} objects')
    outputs = []
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f'requested output #{position} needs a "name" string')
        params = _parameters(item.get("parameters"), what=f"requested output {item['name']!r}")
        if "binary_data" in params and not isinstance(params["binary_data"], bool):
            raise ProtocolError(
                f"requested output {item['name']!r}: binary_data must be true or false"
            )
        outputs.append(RequestedOutput(item["name"], params))
    return outputs


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(f'"id" must be a string, got {type(value).__name__}')


def _parameters(value: Any, *, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f'{what}: "parameters" must be a JSON object')
    return value
