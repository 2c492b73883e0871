"""Every subschema of a JSON Schema, found by position, as the vocabulary places them.

A keyword's value is a schema only where the vocabulary says so: a name under `properties` is a
property's name, not a keyword, so `{"properties": {"default": {...}}}` holds a schema named
`default`, and `{"const": {"pattern": "x"}}` holds a value, not a pattern.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Keywords whose value is one schema, a list of schemas, or schemas by name (every draft's).
_ONE = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "contains",
        "not",
        "if",
        "then",
        "else",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contentSchema",
    }
)
_MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_NAMED = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)


def subschemas(schema: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yield each schema object in `schema`, with whether it is the top level (yielded first)."""
    stack: list[tuple[Any, bool]] = [(schema, True)]
    while stack:
        item, top = stack.pop()
        if not isinstance(item, dict):
            continue  # `true` and `false` are schemas too, with nothing inside
        yield item, top
        for key, value in item.items():
            if key in _ONE and isinstance(value, dict):
                stack.append((value, False))
            elif key in _MANY and isinstance(value, list):
                stack.extend((inner, False) for inner in value)
            elif key in _NAMED and isinstance(value, dict):
                stack.extend((inner, False) for inner in value.values())
