"""What a step's audit entry says of it: its call's arguments and key, its output's digest."""

from __future__ import annotations

import json
from typing import Any

from plangate.store.audit_records import output_digest
from schemas.hashing import sha256_hex

ARGS_KEPT = 16 * 1024  # bytes of JSON of a step's arguments kept in its audit entry


def called_with(args: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Return what a step's audit entry says of its call: its arguments, a write's key."""
    text = json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    said: dict[str, Any] = (
        {"args": args}
        if len(text) <= ARGS_KEPT
        else {"args_sha256": sha256_hex(text.encode("utf-8", "surrogatepass"))}
    )
    if key is not None:
        said["idempotency_key"] = key
    return said


def ended_entry(key: dict[str, Any], output: Any, error: str | None) -> dict[str, Any]:
    """Return a step's audit entry: its output's digest, so that a changed row shows.

    The output itself is kept in the step's row (it may be large); `plangate audit verify`
    checks the row against this digest.
    """
    return {**key, "error": error, "output_sha256": output_digest(output)}
