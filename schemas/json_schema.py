"""The JSON Schemas tools declare: bounded, self-contained, linear in time, and checked once.

A schema comes from a tool's author, a published catalog or a remote MCP server, and every
stage runs it on every plan. So a schema is:

- bounded: at most `MAX_SCHEMA_DEPTH` deep and `MAX_SCHEMA_CHARS` of JSON (it travels in every
  plan prompt and catalog message);
- self-contained: a `$ref` points inside the schema (`#...`), and nothing is ever retrieved.
  jsonschema's default resolver fetches http(s) and file: URLs: a server's schema could read a
  local file into a plan's error messages (and so to the model), or reach an internal host;
- linear in time: `pattern`, `patternProperties` and `additionalProperties` beside them match
  with RE2. Python's backtracking `re` on a catastrophic pattern holds the interpreter lock for
  as long as it takes, and no timeout, deadline or Ctrl-C gets a turn. A pattern RE2 cannot run
  (a backreference, a lookaround) is refused, and so is `unevaluatedProperties` in a schema
  with `patternProperties` (jsonschema matches those with `re`);
- free of a reference loop that consumes nothing (`{"$ref": "#"}`): validation would recurse
  to the interpreter's limit on any value.

`check_schema` is remembered per distinct schema text: a catalog read builds every spec again.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import re2
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from schemas.decoding import JsonRefused, check_json_value

MAX_SCHEMA_DEPTH = 32
"""How deep a tool's argument or output schema may nest: far past any real one."""
MAX_SCHEMA_CHARS = 64 * 1024
"""How much JSON one schema may take: it travels in every plan prompt and catalog message."""

_NOTHING_RETRIEVED: Registry[Any] = Registry()  # its default retrieval refuses every URI
_DATA_KEYWORDS = ("const", "enum", "default", "examples")  # values, not schemas
_SAMPLES: tuple[Any, ...] = ({}, [], "", 0, None, True)


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError saying what is wrong if `schema` is not one plangate runs."""
    try:
        check_json_value(schema, max_depth=MAX_SCHEMA_DEPTH)
    except JsonRefused as exc:
        raise ValueError(f"the schema: {exc}") from None
    problem = _problem(json.dumps(schema, ensure_ascii=False, sort_keys=True, default=str))
    if problem is not None:
        raise ValueError(problem)


def validator_for(schema: dict[str, Any]) -> Validator:
    """Return a validator of `schema` (by the draft it names, else 2020-12), safe to run."""
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return _safe(base)(schema, registry=_NOTHING_RETRIEVED)


@functools.lru_cache(maxsize=4096)
def _problem(text: str) -> str | None:
    if len(text) > MAX_SCHEMA_CHARS:
        return (
            f"the schema is {len(text)} characters of JSON; the limit is {MAX_SCHEMA_CHARS}: "
            "describe the arguments more briefly"
        )
    schema = json.loads(text)
    try:
        validator_class = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft202012Validator
        )
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "the top level"
        return f"not a valid JSON Schema at {where}: {exc.message}"
    problem = next(_unsafe_parts(schema), None)
    return problem or _loop(schema)


def _unsafe_parts(schema: dict[str, Any]) -> Iterator[str]:
    """Yield what in `schema` would reach outside it or match in more than linear time."""
    seen: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                seen.add(key)
                yield from _unsafe_keyword(key, value)
                if key not in _DATA_KEYWORDS:
                    stack.append(value)
    if {"patternProperties", "unevaluatedProperties"} <= seen:
        yield "it has both unevaluatedProperties and patternProperties; use additionalProperties"


def _unsafe_keyword(key: str, value: Any) -> Iterator[str]:
    if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
        yield (
            f"it refers to {value[:100]!r}, outside itself; a tool's schema must be "
            "self-contained (put what it refers to under $defs)"
        )
    elif key == "pattern" and isinstance(value, str):
        yield from _unrunnable(value)
    elif key == "patternProperties" and isinstance(value, dict):
        for pattern in value:
            yield from _unrunnable(pattern)


def _unrunnable(pattern: str) -> Iterator[str]:
    try:
        _regex(pattern)
    except re2.error:
        yield (
            f"its pattern {pattern[:100]!r} needs backtracking (a backreference or a "
            "lookaround), which plangate does not run: rewrite it without"
        )


def _loop(schema: dict[str, Any]) -> str | None:
    validator = validator_for(schema)
    for sample in _SAMPLES:
        try:
            validator.is_valid(sample)
        except RecursionError:
            return "it refers to itself without end (a $ref loop that reads nothing of the value)"
        except Unresolvable as exc:
            return f"it refers to {str(exc.ref)[:100]!r}, which it does not define"
    return None


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # refused with our own words, not on stderr
    return re2.compile(pattern, options)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and _regex(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _regex(pattern).search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [
        name
        for name in instance
        if name not in known and not any(_regex(p).search(name) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        listed = ", ".join(repr(extra) for extra in sorted(extras))
        verb = "was" if len(extras) == 1 else "were"
        yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


@functools.cache
def _safe(base: type[Validator]) -> type[Validator]:
    keywords = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    extended: type[Validator] = jsonschema.validators.extend(base, keywords)  # type: ignore[no-untyped-call]
    return extended
