"""Naming the call of a write whose outcome is unknown: a person settles that call, not another.

A write cut off mid-call is `unknown` from a moment on, its `since`. Settled "did not happen",
it is called again and may be cut off again: the same step, a later call, a later `since`. A
settle names the `since` of the call its person checked, so that a stale page, a second click
or a client's retry cannot settle a later call nobody checked (`approval_gate.settle`).
"""

from __future__ import annotations

from datetime import UTC, datetime


def since_text(since: datetime) -> str:
    """Return `since` as a settle takes it back: ISO 8601 in UTC, to the microsecond.

    Written with `Z`, as the API's JSON writes every time: a 409 quoting `+00:00` beside a
    list saying `Z` read as another time.
    """
    utc = (since if since.tzinfo else since.replace(tzinfo=UTC)).astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


_SETTLE = "plangate review settle "
# Where a settle must go through serve and no URL of it is known: the reader gives it.
SERVE_URL = "SERVE_URL"


def settle_command(plan_id: str, step_id: str, since: datetime | None) -> str:
    """Return the command that settles the call of `step_id` unknown since `since`, as happened.

    Without `since` (not known here): a placeholder, `SINCE_LISTED` says where to read it.
    """
    when = since_text(since) if since is not None else "SINCE"
    return f"{_SETTLE}{plan_id} {step_id} --since {when} --happened"


def through(text: str, server: str | None) -> str:
    """Return `text` with each settle command in it going through `server` (`--server URL`).

    Written by the executor, the command named no server: run as written on a machine with
    no reviewers file, it failed ("without --server, a reviewer token is checked against
    the reviewers file").
    """
    return text.replace(_SETTLE, f"{_SETTLE}--server {server} ") if server else text


SINCE_LISTED = "SINCE as `plangate review unsettled` lists it"
