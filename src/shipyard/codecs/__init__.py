"""Wire codecs: protocol bodies to numpy and back, apart from transports and runtimes.

`types` holds the transport-neutral request/response every codec produces and the serving
data plane consumes; `v2` is the Open Inference Protocol (KServe V2) JSON + binary tensor
extension; `tensors` and `binary` convert single tensors.
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
