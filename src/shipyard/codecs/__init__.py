"""Wire codecs: protocol bodies to numpy and back, apart from transports and runtimes.

`types` holds the transport-neutral request/response every codec produces and the serving
data plane consumes; `v2` is the Open Inference Protocol (KServe V2) JSON + binary tensor
extension, `grpc` the same protocol's protobuf messages, `tfserving` TF Serving's REST
bodies; `tensors` and `binary` convert single tensors. Dtype names come from one table,
`shipyard.package.dtypes`.
"""

from shipyard.codecs.types import InferenceRequest, InferenceResponse, RequestedOutput
from shipyard.codecs.v2 import decode_request, decode_response, encode_request, encode_response

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]
