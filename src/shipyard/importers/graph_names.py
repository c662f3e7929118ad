"""Rename values in an ONNX graph without clashing with names the converter already used."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import onnx


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call value `old` `new` everywhere; a different value already called `new` moves aside."""
    if old != new:
        rename_values(graph, {old: new})


def rename_values(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    """Rename the values `names` maps (old -> new) throughout the graph, all at once.

    A different value that already holds a new name is renamed first (to `NAME_1` …), since
    ONNX value names must be unique; old names absent from the graph are ignored.
    """
    used = _value_names(graph)
    wanted = set(names.values())
    mapping: dict[str, str] = {}
    for clash in sorted(wanted & used - set(names)):
        fresh = next(
            f"{clash}_{k}" for k in range(1, len(used) + 2) if f"{clash}_{k}" not in used | wanted
        )
        used.add(fresh)
        mapping[clash] = fresh
    mapping.update({old: new for old, new in names.items() if old in used})
    _rename_values(graph, mapping)


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield attr.g
            yield from attr.graphs


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    for sub in _subgraphs(graph):
        names |= _value_names(sub)
    names.discard("")  # an omitted optional input
    return names


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    # Subgraphs may refer to outer-scope values by name, so they get the same mapping.
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
    for sub in _subgraphs(graph):
        _rename_values(sub, mapping)
