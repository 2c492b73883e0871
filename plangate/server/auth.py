"""Intake authentication: an optional shared bearer token (`PLANGATE_INTAKE_TOKEN`).

A wrong token counts against the client's address, as a reviewer's does (`ratelimit`): past
the limit the intake answers 429 until the window has passed; the right token always passes.
"""

from __future__ import annotations

import secrets

from fastapi import Request

from plangate.server.errors import ApiError
from plangate.server.ratelimit import client_address, get_limit
from plangate.server.reviewers import too_many


def intake_token_given(request: Request) -> bool:
    """Return whether the request may submit: no token is set, or it carries that token."""
    expected: str | None = request.app.state.intake_token
    if not expected:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), expected.encode()
    )


def require_intake_token(request: Request) -> None:
    """Refuse (401, or 429 past the limit) a request without the intake token when one is set."""
    if intake_token_given(request):
        return
    limit, address = get_limit(request), client_address(request)
    wait = limit.retry_after(address)
    if wait is not None:
        raise too_many(wait)
    limit.failed(address)
    raise ApiError(
        401,
        "send `Authorization: Bearer <token>` with the token set in PLANGATE_INTAKE_TOKEN",
        headers={"WWW-Authenticate": "Bearer"},
    )
