"""The JSON Schemas tools declare: bounded, self-contained, linear in time, and checked once.

A schema comes from a tool's author, a published catalog or a remote MCP server, and every
stage runs it on every plan. So a schema is:

- bounded: at most `MAX_SCHEMA_DEPTH` deep, `MAX_SCHEMA_CHARS` of JSON (it travels in every
  plan prompt and catalog message) and `MAX_PATTERNS` patterns;
- self-contained: a `$ref` points inside the schema (`#...`), to what it defines, and nothing
  is ever retrieved. jsonschema's default resolver fetches http(s) and file: URLs: a server's
  schema could read a local file into a plan's error messages (and so to the model), or reach
  an internal host. It names its draft (`$schema`) at the top only: a subschema naming one
  would be run by jsonschema's own classes, which match with `re`;
- linear in time: `pattern`, `patternProperties` and `additionalProperties` beside them match
  with RE2. Python's backtracking `re` on a catastrophic pattern holds the interpreter lock for
  as long as it takes, and no timeout, deadline or Ctrl-C gets a turn. A pattern RE2 cannot run
  (a lookahead) is not enforced here, with a warning: the tool still checks its own arguments
  (pydantic's pattern for a Decimal is run as its RE2 equivalent). `unevaluatedProperties`
  beside `patternProperties` is refused (jsonschema matches those with `re`);
- free of a reference loop at its top that reads nothing of the value (`{"$ref": "#"}`); a
  deeper one fails the validation of the value it meets (`errors_of`), not the process.

`check_schema` is remembered per distinct schema text: a catalog read builds every spec again.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import jsonschema
import re2
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from schemas.decoding import JsonRefused, check_json_value
from schemas.schema_walk import subschemas

MAX_SCHEMA_DEPTH = 32
"""How deep a tool's argument or output schema may nest: far past any real one."""
MAX_SCHEMA_CHARS = 64 * 1024
"""How much JSON one schema may take: it travels in every plan prompt and catalog message."""
MAX_PATTERNS = 100
"""How many patterns one schema may hold: each is compiled, at a cost its length does not show."""

log = logging.getLogger(__name__)
_NOTHING_RETRIEVED: Registry[Any] = Registry()  # its default retrieval refuses every URI
_SAMPLES: tuple[Any, ...] = ({}, [], "", 0, None, True)
_PATTERN_MEMORY = 1 << 20  # RE2 refuses a pattern whose program would take more
_ECMA_UNICODE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9A-Fa-f]{4})")


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError saying what is wrong if `schema` is not one plangate runs."""
    try:
        check_json_value(schema, max_depth=MAX_SCHEMA_DEPTH)
        text = json.dumps(schema, ensure_ascii=False, sort_keys=True)
    except (JsonRefused, TypeError) as exc:
        raise ValueError(f"the schema: {exc}") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise ValueError(
            f"the schema is {len(text)} characters of JSON; the limit is {MAX_SCHEMA_CHARS}: "
            "describe the arguments more briefly"
        )
    problem = _problem(text)
    if problem is not None:
        raise ValueError(problem)


def validator_for(schema: dict[str, Any], *, formats: bool = False) -> Validator:
    """Return a validator of `schema` (by the draft it names, else 2020-12), safe to run.

    With `formats`, a `date` or `uuid` string is checked as Python tools read it (a plan's
    `"when": "yesterday"` for a `date` argument was approved, then failed at its call).
    """
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # Run without its `$schema`: a `$ref` back to the top would otherwise pick jsonschema's own
    # class again, by that name, and leave RE2 for `re` below it.
    unnamed = {key: value for key, value in schema.items() if key != "$schema"}
    checker = _FORMATS if formats else None
    return _safe(base)(unnamed, registry=_NOTHING_RETRIEVED, format_checker=checker)


# Read as pydantic reads them (Python tools' arguments are pydantic's), no stricter or
# looser: jsonschema's own `uuid` wants dashes pydantic does without, Python's
# `date.fromisoformat` takes `20240101`, which pydantic refuses for a date.
_DATE_OR_UUID = {"date": TypeAdapter(datetime.date), "uuid": TypeAdapter(uuid.UUID)}
_FORMATS = jsonschema.FormatChecker(formats=())
for _name, _adapter in _DATE_OR_UUID.items():
    _FORMATS.checks(_name, raises=PydanticValidationError)(
        lambda value, read=_adapter: (
            not isinstance(value, str) or read.validate_python(value) is not None
        )
    )


def errors_of(validator: Validator, instance: Any) -> list[ValidationError]:
    """Return what is wrong with `instance`, in path order; a schema that loops says so."""
    try:
        return sorted(validator.iter_errors(instance), key=lambda error: list(error.path))
    except (RecursionError, Unresolvable):
        return [
            ValidationError(
                "the tool's schema cannot be checked against this value: it refers to itself "
                "without end, or to what it does not define; fix the tool's schema"
            )
        ]


@functools.lru_cache(maxsize=1024)
def _problem(text: str) -> str | None:
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
    """Yield what in `schema` would reach outside it, or run jsonschema's own matching."""
    keywords: set[str] = set()
    patterns = 0
    own_ids = False
    refs: list[str] = []
    for part, top in subschemas(schema):
        keywords |= part.keys()
        own_ids = own_ids or (not top and "$id" in part)
        if "$schema" in part and not top:
            yield "it names a draft ($schema) below its top level; name it once, at the top"
        for key in ("$ref", "$dynamicRef"):
            if isinstance(part.get(key), str):
                refs.append(part[key])
        patterns += isinstance(part.get("pattern"), str) + len(part.get("patternProperties", {}))
    if patterns > MAX_PATTERNS:
        yield f"it holds {patterns} patterns; the limit is {MAX_PATTERNS}"
    for ref in refs:
        if not ref.startswith("#"):
            yield (
                f"it refers to {ref[:100]!r}, outside itself; a tool's schema must be "
                "self-contained (put what it refers to under $defs)"
            )
        elif not own_ids and not _points_inside(schema, ref):
            yield f"it refers to {ref[:100]!r}, which it does not define"
    if {"patternProperties", "unevaluatedProperties"} <= keywords:
        yield "it has both unevaluatedProperties and patternProperties; use additionalProperties"


def _points_inside(schema: dict[str, Any], ref: str) -> bool:
    """Whether a local `$ref` (`#`, `#/a/b`, or an `#anchor`) finds something in `schema`."""
    fragment = unquote(ref[1:])
    if not fragment.startswith("/"):
        return True  # the whole schema, or an anchor, found by name when it runs
    node: Any = schema
    for raw in fragment[1:].split("/"):
        step = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return False
    return True


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


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    """Return `pattern` compiled by RE2, or None (with a warning) when RE2 cannot run it."""
    options = re2.Options()
    options.log_errors = False  # said with our own words, not on stderr
    options.max_mem = _PATTERN_MEMORY
    # ECMA-262's `\uXXXX`, which JSON Schema patterns use, is `\x{XXXX}` to RE2.
    translated = _ECMA_UNICODE.sub(r"\1\\x{\2}", _RE2_EQUIVALENTS.get(pattern, pattern))
    try:
        return re2.compile(translated, options)
    except re2.error as exc:
        log.warning(
            "the schema pattern %r is not checked by plangate: RE2, which matches in linear "
            "time, cannot run it (%s); the tool still checks its own arguments",
            pattern[:100],
            exc,
        )
        return None


_PYDANTIC_DECIMAL = r"^(?!^[-+.]*$)[+-]?0*\d*\.?\d*$"
# Patterns pydantic writes with a lookahead, and the same language without one: a Decimal,
# the natural type of an amount, was checked by the tool alone, after a person had approved
# `"amount": "lots"`. (A sign, then digits with at most one point, and at least one digit.)
_RE2_EQUIVALENTS = {_PYDANTIC_DECIMAL: r"^[+-]?(\d+\.?\d*|\.\d+)$"}


def _matches(pattern: str, text: str) -> bool:
    regex = _regex(pattern)
    return regex is None or regex.search(text) is not None


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _regex(pattern)
        for name, value in instance.items():
            if regex is not None and regex.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    compiled = [regex for regex in map(_regex, patterns) if regex is not None]
    extras = [
        name
        for name in instance
        if name not in known and not any(regex.search(name) for regex in compiled)
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
