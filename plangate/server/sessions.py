"""Reviewers' web sessions: a row in the store, a signed cookie, a CSRF token per form.

The cookie holds only a random session id, signed with `PLANGATE_SESSION_SECRET` (itsdangerous);
the store keeps the id's hash, who logged in and the hash of the token they used. Every request
checks the signature, finds the row (not ended, not expired) and finds the reviewer again by
that token hash in the reviewers file as it reads now: a removed reviewer's sessions stop, and
their roles are always the file's. A form's CSRF token is HMAC(secret, session id), so every
replica of `serve` that shares the secret and the database accepts any other's forms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.redaction import register_secret
from plangate.reviewers import Reviewer, Reviewers, session_binding
from plangate.store import ReviewSessionRow, Store
from schemas import utcnow

log = logging.getLogger(__name__)
SESSION_COOKIE = "plangate_session"
MIN_SECRET_LENGTH = 32


def session_secret(settings: Settings) -> str:
    """Return `PLANGATE_SESSION_SECRET`, or a per-process one (with a warning) when unset."""
    if settings.session_secret is None:
        log.warning(
            "PLANGATE_SESSION_SECRET is unset: this process made its own, so another replica "
            "of serve refuses its sessions and forms (and a restart logs everyone out); set "
            "the same secret of 32+ characters on every replica"
        )
        made = secrets.token_urlsafe(32)
        register_secret(made)
        return made
    secret = settings.session_secret.get_secret_value()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"PLANGATE_SESSION_SECRET is shorter than {MIN_SECRET_LENGTH} characters; make one "
            "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return secret


@dataclass(frozen=True)
class WebSession:
    """A logged-in reviewer, as the current reviewers file knows them, and their form token."""

    reviewer: Reviewer
    session_id: str
    csrf: str


def _row_id(session_id: str) -> str:
    # The store keeps a hash: its rows alone (a backup, a read replica) open no session.
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionKeeper:
    """Starts, finds and ends sessions; one per app, with the secret every replica shares."""

    def __init__(self, secret: str, ttl: timedelta, *, secure: bool) -> None:
        self._secret = secret.encode()
        self._ttl = ttl
        self._secure = secure
        self._cookies = URLSafeTimedSerializer(
            secret, salt="plangate.review-session", signer_kwargs={"digest_method": hashlib.sha256}
        )

    def start(self, store: Store, reviewer: Reviewer, response: Response) -> None:
        """Record a new session for `reviewer` and set its cookie on `response`."""
        session_id = secrets.token_urlsafe(32)
        now = utcnow()
        with store.session() as session:
            session.add(
                ReviewSessionRow(
                    id=_row_id(session_id),
                    reviewer=reviewer.name,
                    # The column keeps the binding, not the hash (see session_binding).
                    token_sha256=session_binding(reviewer.token_sha256),
                    created_at=now,
                    expires_at=now + self._ttl,
                )
            )
        response.set_cookie(
            SESSION_COOKIE,
            self._cookies.dumps(session_id),
            max_age=int(self._ttl.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=self._secure,
        )

    def find(self, store: Store, reviewers: Reviewers, request: Request) -> WebSession | None:
        """Return the request's session, or None if it has none that holds now."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            session_id = self._cookies.loads(cookie, max_age=int(self._ttl.total_seconds()))
        except BadSignature:  # another secret, tampered with, or older than the TTL
            return None
        if not isinstance(session_id, str):
            return None
        # Read only: every page a reviewer opens asks, and a writing transaction queued each
        # behind the workers' writes (and them behind it) for SQLite's one write lock.
        with store.reading() as session:
            row = session.get(ReviewSessionRow, _row_id(session_id))
            if row is None or row.ended_at is not None or row.expires_at <= utcnow():
                return None
            binding = row.token_sha256
        reviewer = reviewers.by_session_binding(binding)
        if reviewer is None:  # removed from the reviewers file, or given a new token
            request.state.plangate_reviewer_gone = True  # said so: logging in again won't do
            return None
        return WebSession(reviewer, session_id, self.csrf(session_id))

    def end(self, store: Store, web: WebSession, response: Response | None = None) -> None:
        """End a session for good (every replica refuses it from now on); clear its cookie."""
        with store.session() as session:
            row = session.get(ReviewSessionRow, _row_id(web.session_id))
            if row is not None and row.ended_at is None:
                row.ended_at = utcnow()
        if response is not None:
            self.clear(response)

    def clear(self, response: Response) -> None:
        """Remove the session cookie from the browser."""
        response.delete_cookie(
            SESSION_COOKIE, httponly=True, samesite="strict", secure=self._secure
        )

    def csrf(self, session_id: str) -> str:
        """Return the CSRF token of a session's forms."""
        return hmac.new(self._secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, web: WebSession, given: str) -> bool:
        """Return whether `given` is the CSRF token of the session `web`."""
        return hmac.compare_digest(web.csrf.encode(), given.encode())
