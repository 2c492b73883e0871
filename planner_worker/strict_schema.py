"""A tool's argument schema rewritten into the subset strict structured outputs accept.

OpenAI's strict mode (and the servers that copy it: vLLM, llama.cpp) needs every object closed
(`additionalProperties: false`) with every property required; an optional property becomes
nullable instead, and the nulls are dropped again when the answer is read (`drop_nulls`).
Strings get a length cap so that a model cannot ramble inside one until `max_tokens`.
Keywords strict mode refuses (`default`, `title`, `oneOf`, ...) are left out or translated;
the plan validator still checks the arguments against the tool's own, full schema.
"""

from __future__ import annotations

from typing import Any

MAX_STRING_CHARS = 2000
MAX_LIST_ITEMS = 50

JsonSchema = dict[str, Any]

# Kept as they are; every other keyword is dropped or translated below.
_KEPT = (
    "description",
    "enum",
    "const",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
)
_ANY_VALUE: JsonSchema = {"type": ["string", "number", "boolean", "null"]}


def capped_string(max_chars: int, min_chars: int = 0) -> JsonSchema:
    """Return a schema of a one-line string of at most `max_chars` characters.

    The cap is a `pattern`, not `maxLength`: OpenAI's strict mode documents `pattern` (not the
    length keywords) as supported, and llama.cpp enforces it while generating. It is `.`, one
    line, because llama.cpp did not enforce the same cap on "any character including newline".
    """
    return {"type": "string", "pattern": f"^.{{{min_chars},{max_chars}}}$"}


def strict(schema: Any, defs_prefix: str = "") -> JsonSchema:
    """Return `schema` rewritten for strict mode; `$ref`s to `#/$defs/X` get `defs_prefix`."""
    if not isinstance(schema, dict) or not schema:
        return dict(_ANY_VALUE)  # an unconstrained value: any JSON scalar
    if "$ref" in schema:
        return {"$ref": _prefixed(schema["$ref"], defs_prefix)}
    variants = schema.get("anyOf") or schema.get("oneOf")
    if variants:
        return {"anyOf": [strict(v, defs_prefix) for v in variants]}
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return strict(schema["allOf"][0], defs_prefix)
    out: JsonSchema = {k: schema[k] for k in _KEPT if k in schema}
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        out.update(_strict_object(schema, defs_prefix))
    elif kind == "array":
        out["type"] = "array"
        out["items"] = strict(schema.get("items"), defs_prefix)
        out["maxItems"] = min(int(schema.get("maxItems", MAX_LIST_ITEMS)), MAX_LIST_ITEMS)
    elif kind == "string" and not {"enum", "const", "pattern"} & out.keys():
        cap = min(int(schema.get("maxLength", MAX_STRING_CHARS)), MAX_STRING_CHARS)
        out.update(capped_string(cap, int(schema.get("minLength", 0))))
    elif kind is not None:
        out["type"] = kind
    elif not {"enum", "const"} & out.keys():
        out.update(_ANY_VALUE)
    return out


def strict_defs(schema: JsonSchema, defs_prefix: str) -> dict[str, JsonSchema]:
    """Return the schema's `$defs`, made strict, under their prefixed names."""
    defs = schema.get("$defs") or {}
    return {f"{defs_prefix}{name}": strict(sub, defs_prefix) for name, sub in defs.items()}


def _strict_object(schema: JsonSchema, defs_prefix: str) -> JsonSchema:
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    strict_props = {}
    for name, sub in properties.items():
        converted = strict(sub, defs_prefix)
        strict_props[name] = converted if name in required else _nullable(converted)
    # A free-form map (`additionalProperties: {...}`) has no strict form: it becomes `{}`.
    return {
        "type": "object",
        "properties": strict_props,
        "required": list(properties),
        "additionalProperties": False,
    }


def _nullable(schema: JsonSchema) -> JsonSchema:
    if "anyOf" in schema:  # `X | None` in pydantic is already a union with null
        nulls = [v for v in schema["anyOf"] if v.get("type") == "null"]
        return schema if nulls else {"anyOf": [*schema["anyOf"], {"type": "null"}]}
    kind = schema.get("type")
    if isinstance(kind, str) and not {"enum", "const"} & schema.keys():
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _prefixed(ref: Any, defs_prefix: str) -> str:
    text = str(ref)
    marker = "#/$defs/"
    return marker + defs_prefix + text[len(marker) :] if text.startswith(marker) else text


def drop_nulls(value: Any, schema: Any, root: JsonSchema | None = None) -> Any:
    """Remove the nulls a strict answer puts in optional properties (they mean "left out")."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = _branch(_resolve(schema, root), value, root)
    if isinstance(value, dict) and isinstance(schema, dict):
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return {
            key: drop_nulls(item, properties.get(key), root)
            for key, item in value.items()
            if not (item is None and key in properties and key not in required)
        }
    if isinstance(value, list) and isinstance(schema, dict):
        return [drop_nulls(item, schema.get("items"), root) for item in value]
    return value


def _branch(schema: Any, value: Any, root: JsonSchema) -> Any:
    """Return the variant of a union that describes `value` (an object or a list)."""
    if not isinstance(schema, dict) or "anyOf" not in schema:
        return schema
    wanted = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
    for variant in schema["anyOf"]:
        resolved = _resolve(variant, root)
        if isinstance(resolved, dict) and wanted is not None and _describes(resolved, wanted):
            return resolved
    return schema


def _describes(schema: JsonSchema, kind: str) -> bool:
    return schema.get("type") == kind or (kind == "object" and "properties" in schema)


def _resolve(schema: Any, root: JsonSchema) -> Any:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        name = schema["$ref"].removeprefix("#/$defs/")
        return (root.get("$defs") or {}).get(name)
    return schema
