"""Request limits in the server: decode limits and the output cap (no web framework here).

The server's `limits` settings apply to every model; a model's `model.toml` `[limits]`
overrides single fields (`DataPlane.limits_for`). They are enforced, outside in, by:

- the body limit, in one place (`protocols/http.py`): the HTTP dispatcher refuses a
  Content-Length over the route's `max_body_bytes` (its model's, or the server's) with 413
  before a byte is read, and `read_body` cuts a body that streams past it, or decompresses
  past it, off with 413 (gRPC: grpc's own max_receive_message_length);
- the codecs, given `decode_limits(...)`: JSON depth, elements per tensor and per request,
  BYTES element size, declared sizes against the body — all before allocating;
- the data plane, with `check_output_size`: a response's tensors against `max_output_bytes`.

Every refusal is a `ShipyardError` with a 4xx status and a message naming the limit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from http import HTTPStatus

import numpy as np

from shipyard.codecs.limits import DecodeLimits
from shipyard.errors import ShipyardError
from shipyard.serving.settings import LimitsSettings

__all__ = [
    "OutputTooLarge",
    "check_output_size",
    "decode_limits",
]


class OutputTooLarge(ShipyardError):
    """The model's outputs for this request are larger than the server sends."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, model: str, size: int, limit: int) -> None:
        super().__init__(
            f"model {model!r} produced {size}+ bytes of outputs, over the {limit}-byte limit "
            "(limits.max_output_bytes); send smaller batches or request fewer outputs"
        )
        self.size = size
        self.limit = limit


@functools.lru_cache(maxsize=64)
def decode_limits(limits: LimitsSettings) -> DecodeLimits:
    """The codec-level limits of a (server or model) limits setting."""
    return DecodeLimits(
        max_json_depth=limits.max_json_depth,
        max_tensor_elements=limits.max_tensor_elements,
        max_request_elements=limits.max_request_elements,
        max_bytes_element=limits.max_bytes_element,
    )


def check_output_size(outputs: Mapping[str, np.ndarray], *, limit: int, model: str) -> None:
    """OutputTooLarge when the outputs hold more than `limit` bytes (BYTES: their lengths)."""
    total = 0
    for array in outputs.values():
        if array.dtype == object:
            total += 4 * array.size  # the binary layout's length prefixes
            for item in array.flat:
                total += len(item) if isinstance(item, bytes | str) else 8
                if total > limit:
                    break
        else:
            total += array.nbytes
        if total > limit:
            raise OutputTooLarge(model, total, limit)
