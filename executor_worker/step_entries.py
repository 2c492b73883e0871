"""What a step's audit entry says of it: its call's arguments and key, its output's digest."""

from __future__ import annotations

from typing import Any

from plangate.store.audit_records import output_digest
from schemas.hashing import canonical_json

ARGS_KEPT = 16 * 1024  # bytes of canonical JSON of a step's arguments kept in its audit entry
ARGS_DEPTH = 32  # levels of nesting kept (the log's reader refuses far deeper data)


def called_with(args: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Return what a step's audit entry says of its call: its arguments, a write's key.

    The arguments as the entry's hash will read them (RFC 8785); ones it cannot hold (an
    integer past 2**53 from a read's output, more than `ARGS_KEPT` bytes, deeper than
    `ARGS_DEPTH`) are named by their digest alone, computed as an output's is (sorted-key
    JSON): written as they are, the entry could not be hashed and the step's end was lost.
    """
    try:
        fits = _depth(args) <= ARGS_DEPTH and len(canonical_json(args)) <= ARGS_KEPT
    except (ValueError, TypeError):  # rfc8785's domain errors are ValueErrors
        fits = False
    said: dict[str, Any] = {"args": args} if fits else {"args_sha256": output_digest(args)}
    if key is not None:
        said["idempotency_key"] = key
    return said


def _depth(value: Any, levels: int = 0) -> int:
    if levels > ARGS_DEPTH:
        return levels
    if isinstance(value, dict):
        return max((_depth(v, levels + 1) for v in value.values()), default=levels + 1)
    if isinstance(value, list):
        return max((_depth(v, levels + 1) for v in value), default=levels + 1)
    return levels


def ended_entry(key: dict[str, Any], output: Any, error: str | None) -> dict[str, Any]:
    """Return a step's audit entry: its output's digest, so that a changed row shows.

    The output itself is kept in the step's row (it may be large); `plangate audit verify`
    checks the row against this digest.
    """
    return {**key, "error": error, "output_sha256": output_digest(output)}
