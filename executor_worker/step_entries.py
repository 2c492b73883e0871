"""What a step's audit entry says of it: its call's arguments and key, its output's digest."""

from __future__ import annotations

from typing import Any

from plangate.store.audit_records import output_digest


def ended_entry(key: dict[str, Any], output: Any, error: str | None) -> dict[str, Any]:
    """Return a step's audit entry: its output's digest, so that a changed row shows.

    The output itself is kept in the step's row (it may be large); `plangate audit verify`
    checks the row against this digest.
    """
    return {**key, "error": error, "output_sha256": output_digest(output)}
