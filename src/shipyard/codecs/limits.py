"""Decode limits: how much one request may make the server allocate, checked before it does.

Every codec (V2 JSON and binary, TF Serving, gRPC) takes a `DecodeLimits`; a request over
a size limit gets `RequestTooLarge` (413), one nested too deep a `ProtocolError` (400, as
for JSON past the parser's own 1024 levels); each message names its limit.
The defaults are safe for a public endpoint and generous for ordinary models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shipyard.codecs.errors import ProtocolError, RequestTooLarge

MAX_RANK = 32
"""Most dimensions a tensor may declare (numpy stops at 64; ONNX models rarely pass 8)."""


@dataclass(frozen=True)
class DecodeLimits:
    """Per-request decode limits; the server fills them from its settings and model.toml."""

    max_json_depth: int = 32
    """Deepest nesting of a JSON body (a rank-R tensor's data nests R + 3 deep)."""
    max_tensor_elements: int = 1 << 24
    """Most elements one tensor may declare (its shape's product, zero dimensions as 1)."""
    max_request_elements: int = 1 << 25
    """Most elements all tensors of one request may declare together."""
    max_bytes_element: int = 1 << 20
    """Largest single BYTES (string) element, in bytes."""


DEFAULT_LIMITS = DecodeLimits()


def check_elements(shape: tuple[int, ...], limits: DecodeLimits, *, what: str) -> int:
    """The number of elements `shape` declares; RequestTooLarge past max_tensor_elements.

    Zero dimensions count as 1 here, so `[0, 10**15]` is refused like `[10**15]`: numpy
    cannot even build an empty array of that shape.
    """
    extent = declared_extent(shape)
    if extent > limits.max_tensor_elements:
        raise RequestTooLarge(
            f"{what}: shape {list(shape)} declares {extent} elements, over the limit of "
            f"{limits.max_tensor_elements} per tensor (limits.max_tensor_elements); "
            "send smaller batches"
        )
    return 0 if 0 in shape else extent


def declared_extent(shape: tuple[int, ...] | list[int]) -> int:
    """The product of a shape's dims above 1 (a zero dim does not make a huge shape small),
    in C: this runs for every tensor of every request."""
    return math.prod(filter(_ONE.__lt__, shape))


_ONE = 1


def check_request_elements(total: int, limits: DecodeLimits) -> None:
    """RequestTooLarge when a request's tensors declare more than max_request_elements."""
    if total > limits.max_request_elements:
        raise RequestTooLarge(
            f"the request's tensors declare {total} elements, over the limit of "
            f"{limits.max_request_elements} per request (limits.max_request_elements); "
            "send smaller batches"
        )


def check_bytes_element(size: int, limits: DecodeLimits | None, *, what: str) -> None:
    """RequestTooLarge when one BYTES element is larger than max_bytes_element."""
    if limits is not None and size > limits.max_bytes_element:
        raise RequestTooLarge(
            f"{what}: a BYTES element of {size} bytes is over the limit of "
            f"{limits.max_bytes_element} (limits.max_bytes_element)"
        )


def check_json_depth(
    doc: Any, limits: DecodeLimits, *, what: str, text: bytes | None = None
) -> None:
    """ProtocolError when `doc` nests deeper than max_json_depth.

    Objects are walked in full; a nested array is followed along its first element, which
    costs O(depth) rather than O(elements) for tensor data (a ragged array is refused
    anyway when its tensor is built). `text`, the JSON `doc` was parsed from, skips the
    walk when it has too few brackets to nest that deep (each level below the top value
    opens one; counting bytes is far cheaper than the walk).
    """
    limit = limits.max_json_depth
    if text is not None and text.count(b"[") + text.count(b"{") < limit:
        return
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ProtocolError(f"{what} nests deeper than {limit} levels (limits.max_json_depth)")
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list) and node:
            first = node[0]
            if isinstance(first, dict):
                stack.extend((value, depth + 1) for value in node)
            elif isinstance(first, list):
                stack.append((first, depth + 1))
