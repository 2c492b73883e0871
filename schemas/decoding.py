"""Strict decoding: the first thing done to any message, before anything else reads it.

Order matters: the size is checked before parsing, the content type and encoding before the
bytes are trusted, the version before the model. Any failure is a MessageRejected with a reason
fit for the dead-letter queue. `strict_json_loads` is the one bounded JSON reader: the HTTP
intake and the LLM planner read with it too.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.errors import MessageRejected
from schemas.identifiers import ID_PATTERN
from schemas.messages import MESSAGE_MODELS, SUPPORTED_SCHEMA_VERSIONS, Message

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
"""Arrays and objects nest at most this deep in any JSON plangate reads: far past any real
message or plan, and far from the recursion limit of what reads it next (pydantic, hashing)."""
ACCEPTED_CONTENT_TYPE = "application/json"
JsonProblem = Literal["size", "syntax", "depth", "text"]
# Code points that cannot be encoded as UTF-8 (a lone surrogate) or stored in PostgreSQL (NUL).
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
# The JSON escapes of a surrogate or NUL (for `_needs_walk`; a lone one or a pair alike).
_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
# Messages that come from outside plangate, whose text is stored as it is: NUL is refused too.
_OUTSIDE_TYPES = frozenset({"goal.submitted"})


class JsonRefused(MessageRejected):
    """JSON plangate will not read; `problem` says which limit it broke (size, depth, ...)."""

    def __init__(self, reason: str, problem: JsonProblem) -> None:
        self.problem = problem
        super().__init__(reason)


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"JSON contains {name}, which is not allowed", "syntax")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without ever saying "Infinity"
        raise JsonRefused(
            f"JSON number {_shown(text)} overflows to infinity; not allowed", "syntax"
        )
    return value


def _shown(value: Any, limit: int = 80) -> str:
    """Return a repr of untrusted input short enough for a log line or a dead-letter reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRefused(f"JSON object repeats the key {_shown(key)}", "syntax")
        result[key] = value
    return result


def strict_json_loads(
    body: bytes | str,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    allow_nul: bool = True,
) -> Any:
    """Parse JSON within bounds, or raise JsonRefused saying which one it broke.

    The one JSON reader for anything from outside (messages, HTTP bodies, model answers):
    at most `max_bytes` (characters, for text), nested at most `max_depth` deep, UTF-8,
    no NaN or Infinity (also by overflow), no repeated key, no lone surrogate (it cannot be
    encoded again, so neither hashed nor stored), and no NUL unless `allow_nul`.
    """
    if len(body) > max_bytes:
        raise JsonRefused(f"JSON is {len(body)} bytes long; the limit is {max_bytes}", "size")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"body is not UTF-8: {exc.reason}", "syntax") from exc
    try:
        value = json.loads(
            body,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except json.JSONDecodeError as exc:
        raise JsonRefused(
            (
                # "Unterminated string starting at" reads on with the place; "at char" doubled it.
                f"body is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} "
                f"column {exc.colno}"
            ),
            "syntax",
        ) from exc
    except RecursionError as exc:
        raise JsonRefused(_too_deep(max_depth), "depth") from exc
    except ValueError as exc:  # an integer of more digits than int() converts (4300)
        raise JsonRefused(_unreadable(exc), "syntax") from exc
    if _needs_walk(body, max_depth, allow_nul):
        check_json_value(value, max_depth=max_depth, allow_nul=allow_nul)
    return value


def _needs_walk(text: str, max_depth: int, allow_nul: bool) -> bool:
    """Return whether the value parsed from `text` must be walked to be known within bounds.

    Most texts show it themselves, at C speed (the walk took ~30 µs a message): a value nests
    no deeper than its text has brackets, and a string holds a lone surrogate or a NUL only if
    the text does, raw or as an escape. An escaped backslash before `u0000` looks like one
    too, and costs only the walk.
    """
    bad = _SURROGATE if allow_nul else _UNSTORABLE
    return (
        text.count("{") + text.count("[") >= max_depth
        or bad.search(text) is not None
        or _BAD_ESCAPE.search(text) is not None
    )


def check_json_value(
    value: Any, *, max_depth: int = MAX_JSON_DEPTH, allow_nul: bool = True
) -> None:
    """Raise JsonRefused if `value` nests deeper than `max_depth` or holds text not storable.

    Walked with a stack, not recursion: this is what guards the readers that recurse.
    """
    bad = _SURROGATE if allow_nul else _UNSTORABLE
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if bad.search(item):
                raise JsonRefused(_unstorable(item, bad), "text")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise JsonRefused(_too_deep(max_depth), "depth")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def storable_text(text: str) -> str:
    """Return `text` with what cannot be encoded or stored (lone surrogates, NUL) as U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def _unreadable(exc: ValueError) -> str:
    # Python's own words name `sys.set_int_max_str_digits`, which a sender cannot call.
    if "digits" in str(exc):
        return (
            f"JSON holds a number of more than {sys.get_int_max_str_digits()} digits, "
            "which is not read; send it as a string"
        )
    return f"JSON cannot be read: {exc}"


def _too_deep(max_depth: int) -> str:
    return f"JSON is nested too deeply (more than {max_depth} levels); flatten it"


def _unstorable(text: str, bad: re.Pattern[str]) -> str:
    found = bad.search(text)
    what = "NUL" if found and found.group(0) == "\x00" else "a lone surrogate"
    return (
        f"JSON text {_shown(text, 40)} holds {what}, which cannot be stored; "
        "send valid Unicode text without NUL"
    )


def decode_message(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = "utf-8",
    headers: Mapping[str, Any] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Message:
    """Decode a raw message body into its model, or raise MessageRejected saying why."""
    if len(body) > max_bytes:
        raise MessageRejected(f"body is {len(body)} bytes; the limit is {max_bytes}")
    if (content_type or "").split(";")[0].strip().lower() != ACCEPTED_CONTENT_TYPE:
        if not content_type:
            raise MessageRejected(f"the message has no content type; send {ACCEPTED_CONTENT_TYPE}")
        raise MessageRejected(
            f"content type {content_type!r} is not accepted; send {ACCEPTED_CONTENT_TYPE}"
        )
    if content_encoding not in (None, "", "utf-8", "utf8"):
        raise MessageRejected(f"content encoding {content_encoding!r} is not accepted")
    if headers and "compression" in headers:
        raise MessageRejected("compressed messages are not accepted")
    data = strict_json_loads(body, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise MessageRejected("body is not a JSON object")
    if isinstance(data.get("type"), str) and data["type"] in _OUTSIDE_TYPES:
        check_json_value(data, allow_nul=False)
    _check_version(data)
    kind = data.get("type")
    model = MESSAGE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        if kind is None:
            raise MessageRejected("the message has no type")
        raise MessageRejected(f"message type {_shown(kind)} is unknown")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {_problem(e)}"
            for e in exc.errors()[:5]
        )
        raise MessageRejected(f"{kind} does not match its schema: {problems}") from exc


def _check_version(data: dict[str, Any]) -> None:
    """Refuse a message of a schema version this code does not read (1.0 is 1, as in JSON)."""
    version = data.get("schema_version")
    if type(version) is float and version.is_integer():  # JSON Schema's integer too
        version = data["schema_version"] = int(version)
    # type() is int: true == 1 is no version; a list is not even hashable
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
        if version is None:
            raise MessageRejected(f"the message has no schema_version (supported: {supported})")
        if type(version) is not int:  # "1" is not supported "(supported: [1])" read as nonsense
            kind = _JSON_KINDS.get(type(version), "no number")
            raise MessageRejected(
                f"schema_version {_shown(version)} is {kind}: it must be an integer, one of "
                f"{supported}"
            )
        raise MessageRejected(
            f"schema_version {_shown(version)} is not supported (supported: {supported})"
        )


# What a JSON value that is no integer is, in JSON's words (a float here has a fraction).
_JSON_KINDS = {
    str: "a string",
    bool: "a boolean",
    float: "a number with a fraction",
    list: "an array",
    dict: "an object",
}


# What a pattern of the messages' fields asks, in words.
_PATTERNS_SAID = {
    ID_PATTERN: "an id must be one word of printable characters "
    "(no space, line break, control character, / ? # % or backslash)",
    r"\S": "it must not be blank",
}


def _problem(error: ErrorDetails) -> str:
    """Say what is wrong with one field, in words rather than a pattern where we can."""
    if error["type"] == "string_pattern_mismatch":
        return _PATTERNS_SAID.get(str(error.get("ctx", {}).get("pattern")), error["msg"])
    return error["msg"]


def encode_message(message: Message) -> bytes:
    """Serialise a message to the JSON bytes that `decode_message` accepts."""
    return message.model_dump_json().encode("utf-8")
