"""Rename values in an ONNX graph without clashing with names the converter already used."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call value `old` `new` everywhere; a different value already called `new` moves aside."""
    if old == new:
        return
    used = set(_names(graph))
    if new in used:
        spare = _fresh(f"{new}_", used)
        _replace(graph, new, spare)
    _replace(graph, old, new)


def _fresh(prefix: str, used: set[str]) -> str:
    index = 1
    while f"{prefix}{index}" in used:
        index += 1
    return f"{prefix}{index}"


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.name
    for init in graph.initializer:
        yield init.name
    for node in graph.node:
        yield from node.input
        yield from node.output
        for sub in _subgraphs(node):
            yield from _names(sub)


def _replace(graph: onnx.GraphProto, old: str, new: str) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        # Subgraphs may read outer-scope values by name.
        for sub in _subgraphs(node):
            _replace(sub, old, new)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs
