"""JSON Schema (2020-12) building blocks for the OpenAPI document's schemas."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def closed_object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A closed object: these properties and no others."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


STRING: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
COUNT: Schema = {"type": "integer", "minimum": 0}
NUMBERS: Schema = {"type": "array", "items": {"type": "number"}}
DIMS: Schema = {"type": "array", "items": {"type": "integer", "minimum": -1}}
