"""The no-server path the CLI's `shipyard predict --input request.json` reuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from onnx import TensorProto, helper

import shipyard
from shipyard.codecs import decode_request, encode_request, encode_response
from shipyard.codecs.v2 import predict


def test_request_json_to_response_json(tmp_path: Path) -> None:
    words = helper.make_tensor_value_info("words", TensorProto.STRING, [None])
    echoed = helper.make_tensor_value_info("echoed", TensorProto.STRING, [None])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["words"], ["echoed"])], "echo", [words], [echoed]
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    shipyard.pack(model_proto, name="echo", repo=tmp_path)
    model = shipyard.load(tmp_path / "echo")
    request_file = tmp_path / "request.json"
    request_file.write_bytes(
        orjson.dumps(
            {
                "id": "7",
                "inputs": [
                    {"name": "words", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]}
                ],
            }
        )
    )
    request = decode_request(request_file.read_bytes())
    body, header_length = encode_response(predict(model, request), request=request)
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "echo",
        "model_version": "1",
        "id": "7",
        "outputs": [{"name": "echoed", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]}],
    }
    body, length = encode_request(
        {"words": np.array([b"caf\xc3\xa9"], dtype=object)}, binary_inputs=True
    )
    binary = decode_request(body, header_length=length)
    assert predict(model, binary).outputs["echoed"].tolist() == ["café"]
