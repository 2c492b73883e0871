"""Strict decoding: the first thing done to any message, before anything else reads it.

Order matters: the size is checked before parsing, the content type and encoding before the
bytes are trusted, the version before the model. Any failure is a MessageRejected with a reason
fit for the dead-letter queue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from schemas.errors import MessageRejected
from schemas.messages import MESSAGE_MODELS, SUPPORTED_SCHEMA_VERSIONS, Message

MAX_MESSAGE_BYTES = 1024 * 1024
ACCEPTED_CONTENT_TYPE = "application/json"


def _refuse_constant(name: str) -> Any:
    raise MessageRejected(f"JSON contains {name}, which is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without ever saying "Infinity"
        raise MessageRejected(f"JSON number {_shown(text)} overflows to infinity; not allowed")
    return value


def _shown(value: Any, limit: int = 80) -> str:
    """Return a repr of untrusted input short enough for a log line or a dead-letter reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MessageRejected(f"JSON object repeats the key {key!r}")
        result[key] = value
    return result


def strict_json_loads(body: bytes) -> Any:
    """Parse JSON bytes, refusing NaN, Infinity (also by overflow) and duplicate keys."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRejected(f"body is not UTF-8: {exc.reason}") from exc
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except json.JSONDecodeError as exc:
        raise MessageRejected(f"body is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    except RecursionError as exc:
        raise MessageRejected("JSON is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than int() converts (4300)
        raise MessageRejected(f"JSON cannot be read: {exc}") from exc


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
        raise MessageRejected(
            f"content type {content_type!r} is not accepted; only {ACCEPTED_CONTENT_TYPE}"
        )
    if content_encoding not in (None, "", "utf-8", "utf8"):
        raise MessageRejected(f"content encoding {content_encoding!r} is not accepted")
    if headers and "compression" in headers:
        raise MessageRejected("compressed messages are not accepted")
    data = strict_json_loads(body)
    if not isinstance(data, dict):
        raise MessageRejected("body is not a JSON object")
    version = data.get("schema_version")
    # type() is int: true == 1 and 1.0 == 1 are not versions; a list is not even hashable
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
        raise MessageRejected(
            f"schema_version {_shown(version)} is not supported (supported: {supported})"
        )
    kind = data.get("type")
    model = MESSAGE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise MessageRejected(f"message type {_shown(kind)} is unknown")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MessageRejected(f"{kind} does not match its schema: {problems}") from exc


def encode_message(message: Message) -> bytes:
    """Serialise a message to the JSON bytes that `decode_message` accepts."""
    return message.model_dump_json().encode("utf-8")
