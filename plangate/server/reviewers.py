"""Reviewers: API tokens mapped to names and roles, read from `PLANGATE_REVIEWERS_FILE`.

The file (YAML or JSON) reads `reviewers: [{name: alice, token: ..., roles: [finance]}]`.
Tokens are compared in constant time and never logged or shown, not even in errors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plangate.errors import ConfigError
from plangate.server.errors import ApiError

REVIEWERS_FILE_VARIABLE = "PLANGATE_REVIEWERS_FILE"
TOKEN_COOKIE = "plangate_token"


class _ReviewerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=200)
    token: str = Field(min_length=16, max_length=500)
    roles: list[str] = Field(default_factory=list)


class _ReviewersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    reviewers: list[_ReviewerEntry]


@dataclass(frozen=True)
class Reviewer:
    """A person allowed to decide held plans: their name, roles and (hidden) token."""

    name: str
    roles: frozenset[str] = frozenset()
    token: str = field(default="", repr=False, compare=False)


class Reviewers:
    """The known reviewers; `identify` finds one by token in constant time."""

    def __init__(self, reviewers: Sequence[Reviewer] = ()) -> None:
        self._reviewers = tuple(reviewers)
        # A per-process key: CSRF tokens are an HMAC of the session's token under it.
        self._csrf_key = secrets.token_bytes(32)

    def __len__(self) -> int:
        return len(self._reviewers)

    @classmethod
    def from_file(cls, path: Path) -> Reviewers:
        """Read reviewers from a YAML or JSON file (ConfigError, never echoing a token)."""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the reviewers file {path}: {exc}") from None
        try:
            parsed = _ReviewersFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"the reviewers file {path} is invalid ({problems}); it must read "
                "`reviewers: [{name: alice, token: <16+ characters>, roles: [finance]}]`"
            ) from None
        return cls([Reviewer(e.name, frozenset(e.roles), e.token) for e in parsed.reviewers])

    @classmethod
    def from_environment(cls) -> Reviewers:
        """Read `PLANGATE_REVIEWERS_FILE` if set; without it nobody can review over HTTP."""
        path = os.environ.get(REVIEWERS_FILE_VARIABLE)
        return cls.from_file(Path(path)) if path else cls()

    def identify(self, token: str) -> Reviewer | None:
        """Return the reviewer whose token this is, comparing against every one in full."""
        found = None
        given = token.encode()
        for reviewer in self._reviewers:
            if hmac.compare_digest(given, reviewer.token.encode()):
                found = reviewer
        return found

    def csrf_token(self, token: str) -> str:
        """Return the CSRF token of a session (its cookie token)."""
        return hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, token: str, given: str) -> bool:
        """Return whether `given` is the CSRF token of the session `token`."""
        return hmac.compare_digest(self.csrf_token(token).encode(), given.encode())


def get_reviewers(request: Request) -> Reviewers:
    """Return the app's reviewers."""
    reviewers: Reviewers = request.app.state.reviewers
    return reviewers


def require_reviewer(request: Request) -> Reviewer:
    """Return the reviewer named by `Authorization: Bearer <token>`, else refuse with 401."""
    reviewers = get_reviewers(request)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    reviewer = reviewers.identify(given.strip()) if scheme.lower() == "bearer" else None
    if reviewer is None:
        hint = (
            "send `Authorization: Bearer <token>` with a reviewer's token"
            if len(reviewers)
            else f"no reviewers are configured; list them in {REVIEWERS_FILE_VARIABLE}"
        )
        raise ApiError(401, hint, headers={"WWW-Authenticate": "Bearer"})
    return reviewer
