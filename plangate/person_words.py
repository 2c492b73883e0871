"""What a person writes with a decision (a comment, a reason), as plangate records it.

A reviewer's comment goes into the goal's reason (readable with the intake token), the audit
log, the decision's span, the log and the planner's prompt. A token pasted into it was kept
whole there: only the deciding reviewer's own was known as a secret, so alice pasting bob's
token handed it to whoever reads a goal. `recorded_words` takes out, before any of that, every
token-shaped word that is a reviewer's token (known by the SHA-256 the reviewers file keeps,
registered here by every `Reviewers` read): it becomes a secret of the process, as the intake
tokens, current and previous, are, and each record, log line, span and message says
`[redacted]` in its place. The comment is kept, not refused: the person meant to write it, and
the token is to be revoked anyway.

A token once a reviewer's stays known to the process after it is removed from the file: it
opened the API until then, and a word redacted too often costs nothing.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable

from plangate.errors import check_comment
from plangate.redaction import MIN_SECRET_CHARS, register_secrets

# A word as a token is written: URL-safe base64 (`plangate reviewers add` makes 43 of them).
_TOKEN_WORD = re.compile(rf"[A-Za-z0-9_-]{{{MIN_SECRET_CHARS},}}")
_HASH = re.compile(r"^[0-9a-f]{64}$")


class _Known:
    """The SHA-256 hashes of the tokens that are secrets (swapped whole)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hashes: frozenset[str] = frozenset()


_known = _Known()


def register_token_hashes(hashes: Iterable[str]) -> None:
    """Make the tokens with these SHA-256 hashes secrets in every person's words from now on."""
    fresh = {digest for digest in hashes if _HASH.match(digest)}
    with _known.lock:
        if not fresh <= _known.hashes:
            _known.hashes = _known.hashes | fresh


def scrubbed(text: str) -> str:
    """Return a person's text, every reviewer's token in it made a secret of this process.

    Registered, not replaced here: every writer redacts a secret (`plangate.redaction`), and
    the audit log then records a redaction, where a `[redacted]` already in the text would be
    recorded as the person's own words. The intake tokens are registered with the settings.
    """
    hashes = _known.hashes
    if hashes and text:
        register_secrets(word for word in _TOKEN_WORD.findall(text) if _digest(word) in hashes)
    return text


def recorded_words(text: str, what: str = "the comment") -> str:
    """Return a person's comment or reason as it is recorded: checked, then `scrubbed`.

    InputInvalid if it cannot be recorded as written (`check_comment`).
    """
    check_comment(text, what)
    return scrubbed(text)


def _digest(word: str) -> str:
    return hashlib.sha256(word.encode()).hexdigest()
