"""Intake authentication: an optional shared bearer token (`PLANGATE_INTAKE_TOKEN`).

Past the token, each address may submit PLANGATE_INTAKE_GOALS_PER_MINUTE goals a minute to
this process (`intake_admission`); more answer 429.

A wrong token counts against the client's address, as a reviewer's does (`ratelimit`), but on
a count of its own: a sender left with a replaced token must not lock the reviewers behind the
same address out. Past the limit the intake answers 429 until the window has passed; the right
token always passes. While the token is rotated, the previous one
(`PLANGATE_INTAKE_TOKEN_PREVIOUS`) passes too, and its first use is logged with its sender.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from fastapi import Request

from plangate.server.errors import ApiError
from plangate.server.ratelimit import WindowLimit, client_address, get_limit
from plangate.server.reviewers import too_many

log = logging.getLogger(__name__)

_previous_said: set[str] = set()  # the senders of the previous token this process logged


def intake_token_given(request: Request) -> bool:
    """Return whether the request may submit: no token is set, or it carries that token."""
    expected: str | None = request.app.state.intake_token
    if not expected:
        return True
    given = _bearer(request)
    if given is None:
        return False
    if secrets.compare_digest(given.encode(), expected.encode()):
        return True
    previous: str | None = getattr(request.app.state, "intake_token_previous", None)
    if previous and secrets.compare_digest(given.encode(), previous.encode()):
        sender = client_address(request)
        if sender not in _previous_said:
            _previous_said.add(sender)
            log.warning(
                "%s sent the previous intake token (PLANGATE_INTAKE_TOKEN_PREVIOUS): give it "
                "the new one; unset the previous once every sender has it",
                sender,
            )
        return True
    return False


def require_intake_token(request: Request) -> None:
    """Refuse (401, or 429 past the limit) a request without the intake token when one is set."""
    if intake_token_given(request):
        return
    limit, address = get_limit(request), f"intake {client_address(request)}"
    wait = limit.retry_after(address)
    if wait is not None:
        raise too_many(wait)
    limit.count(address)
    if _bearer(request) is None:
        said = "send `Authorization: Bearer <token>` with the token set in PLANGATE_INTAKE_TOKEN"
    else:  # said apart from no token at all: a sender left with a replaced one knows why
        said = (
            "the bearer token is not this intake's token (PLANGATE_INTAKE_TOKEN): it was "
            "replaced, or mistyped; send the one set there now"
        )
    raise ApiError(401, said, headers={"WWW-Authenticate": "Bearer"})


def intake_admission(request: Request) -> Callable[[], None] | None:
    """Return what refuses (429) a new goal from an address past its per-minute limit.

    PLANGATE_INTAKE_GOALS_PER_MINUTE, in this process. Called as a new goal is about to be
    stored: a duplicate (a client retrying with its key, as keys are for) or a refused body
    stores nothing and is not counted, and a duplicate is answered even past the limit.
    """
    limit: WindowLimit | None = request.app.state.intake_limit
    if limit is None:
        return None
    address, per_minute = (
        client_address(request),
        request.app.state.settings.intake_goals_per_minute,
    )

    def admit() -> None:
        wait = limit.take(address)
        if wait is not None:
            raise ApiError(
                429,
                f"your address submitted {per_minute} goals within a minute, the most "
                f"PLANGATE_INTAKE_GOALS_PER_MINUTE allows; try again in {wait} s, or publish "
                "goals on the broker if you send more",
                headers={"Retry-After": str(wait)},
            )

    return admit


def _bearer(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None
