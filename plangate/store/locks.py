"""Named locks held until the transaction ends: decisions that must not interleave.

On PostgreSQL, a transaction-scoped advisory lock per name (`pg_advisory_xact_lock`): a second
transaction asking for the same name waits until the first commits, and then (READ COMMITTED)
reads what it wrote. On SQLite every transaction holds the one write lock from its start
(`BEGIN IMMEDIATE`), so they are serialised already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session


def lock_names(session: Session, names: Iterable[str]) -> None:
    """Hold a lock on each name (in sorted order: no two callers deadlock) until commit."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for name in sorted(set(names)):
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
