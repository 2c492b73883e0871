"""Who is asking: the reviewer named by a request's bearer token (the JSON API).

Reviewers and their token hashes come from `PLANGATE_REVIEWERS_FILE` (see `plangate.reviewers`),
read again when the file changes. Bad tokens count against the client's address: past the limit
the API answers 429 until the window has passed.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import Request

from plangate.reviewers import REVIEWERS_FILE_VARIABLE, Reviewer, Reviewers, ReviewersFile
from plangate.server.errors import ApiError
from plangate.server.ratelimit import client_address, get_limit

__all__ = ["Reviewer", "ReviewerSource", "Reviewers", "ReviewersFile", "require_reviewer"]


class ReviewerSource(Protocol):
    """Reviewers as they are now: fixed (`Reviewers`) or a file read again on change."""

    def current(self) -> Reviewers:
        """Return the reviewers as they are now."""
        ...


FILE_FIXED_SECONDS = 30  # a client's wait for a reviewers file to be fixed (Retry-After)


def get_reviewers(request: Request) -> Reviewers:
    """Return the app's reviewers as they are now."""
    source: ReviewerSource = request.app.state.reviewers
    return source.current()


def too_many(retry_after: int) -> ApiError:
    """Return the 429 a client gets after too many failed attempts."""
    return ApiError(
        429,
        f"too many failed attempts from your address; try again in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def require_reviewer(request: Request) -> Reviewer:
    """Return the reviewer named by `Authorization: Bearer <token>`; else 401 (or 429)."""
    limit, address = get_limit(request), client_address(request)
    reviewers = get_reviewers(request)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    reviewer = reviewers.identify(given.strip()) if scheme.lower() == "bearer" else None
    if reviewer is not None:
        return reviewer
    wait = limit.retry_after(address)  # a valid token passes: see `ratelimit`
    if wait is not None:
        raise too_many(wait)
    if reviewers.problem is not None:  # nobody is known: not the client's fault
        said = f"nobody can review until this is fixed: {reviewers.problem}"
        # Read again once it changes: a client may try again, as after any 503.
        raise ApiError(503, said, headers={"Retry-After": str(FILE_FIXED_SECONDS)})
    if not len(reviewers):
        hint = (
            f"no reviewers are configured; add them to {REVIEWERS_FILE_VARIABLE} with "
            "`plangate reviewers add NAME`"
        )
    elif not given.strip():
        # No guess at a token: not counted, so a client that forgot the header is told what
        # to send, not locked out by its own mistake.
        raise ApiError(
            401,
            "send `Authorization: Bearer <token>` with a reviewer's token "
            "(`plangate reviewers add NAME` makes one)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    else:
        hint = (
            "that token is no reviewer's (unknown, or replaced by `plangate reviewers add`); "
            "send `Authorization: Bearer <token>` with a reviewer's token"
        )
    limit.count(address)
    raise ApiError(401, hint, headers={"WWW-Authenticate": "Bearer"})
