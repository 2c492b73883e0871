"""Named locks held until the transaction ends: decisions that must not interleave.

On PostgreSQL, a transaction-scoped advisory lock per name (`pg_advisory_xact_lock`): a second
transaction asking for the same name waits until the first commits, and then (READ COMMITTED)
reads what it wrote. On SQLite every transaction holds the one write lock from its start
(`BEGIN IMMEDIATE`), so they are serialised already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from plangate.errors import Conflict


def lock_names(session: Session, names: Iterable[str]) -> None:
    """Hold a lock on each name (in sorted order: no two callers deadlock) until commit."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for name in sorted(set(names)):
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# How long a person's decision waits for a goal another transaction holds. A process stopped
# inside one (a gate paused, cut off) held it for as long as it lived: every approval of that
# goal then waited with a connection of serve's pool, until the pool ran dry for every request.
PERSON_LOCK_WAIT_SECONDS = 5.0


@contextmanager
def waiting_at_most(session: Session, seconds: float, busy: str) -> Iterator[None]:
    """Bound the waits for row locks in this transaction; past it, Conflict saying `busy`.

    PostgreSQL's `lock_timeout` for the rest of the transaction. SQLite waits for its one
    write lock at `BEGIN`, bounded by its own busy timeout.
    """
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    session.execute(text(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'"))
    try:
        yield
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise Conflict(busy) from exc
