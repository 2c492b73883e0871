"""Intake authentication: an optional shared bearer token (`PLANGATE_INTAKE_TOKEN`)."""

from __future__ import annotations

import secrets

from fastapi import Request

from plangate.server.errors import ApiError


def require_intake_token(request: Request) -> None:
    """Refuse (401) a request without `Authorization: Bearer <token>` when a token is set."""
    expected: str | None = request.app.state.intake_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise ApiError(
            401,
            "send `Authorization: Bearer <token>` with the token set in PLANGATE_INTAKE_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
