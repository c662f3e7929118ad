"""Transport-neutral inference request and response: named numpy tensors plus parameters.

Every protocol codec (V2 JSON/binary, TF Serving REST, V2 gRPC) decodes into
`InferenceRequest` and encodes from `InferenceResponse`; the serving data plane sees only
these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shipyard.codecs.errors import ProtocolError

Parameter = str | int | float | bool
Parameters = dict[str, Parameter]


@dataclass
class RequestedOutput:
    """An output the client asks for, with its per-output parameters (e.g. binary_data)."""

    name: str
    parameters: Parameters = field(default_factory=dict)

    @property
    def binary(self) -> bool | None:
        """The output's `binary_data` choice, or None when the request-level default applies."""
        value = self.parameters.get("binary_data")
        return value if isinstance(value, bool) else None


@dataclass
class InferenceRequest:
    """One inference call: inputs by name (in request order) and the outputs wanted."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    timeout_us: int | None = None
    """The `timeout` parameter (µs; Triton's schedule policy), None when not sent or 0."""
    priority: int = 0
    """The `priority` parameter (1 = highest), 0 when not sent."""

    @property
    def output_names(self) -> list[str]:
        """Requested output names; empty means every output of the model."""
        return [o.name for o in self.outputs] if self.outputs else []

    @property
    def binary_outputs(self) -> bool:
        """The request-level `binary_data_output` default (V2 binary tensor extension)."""
        return self.parameters.get("binary_data_output") is True


@dataclass
class InferenceResponse:
    """The outputs of one call (only those requested, in order) and who produced them."""

    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


def schedule_parameters(parameters: Mapping[str, Parameter]) -> tuple[int | None, int]:
    """(timeout_us, priority) from a request's parameters; ProtocolError (400) when either
    is not a non-negative integer. A timeout of 0 means none, as in Triton."""
    if not parameters:
        return None, 0
    timeout = _whole(parameters, "timeout", "microseconds")
    return timeout or None, _whole(parameters, "priority", "level, 1 = highest") or 0


def _whole(parameters: Mapping[str, Parameter], key: str, unit: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError(
            f"parameter {key!r} must be a non-negative integer ({unit}), got {value!r}"
        )
    return value
