"""The SQLite store: a write lock held elsewhere fails a transaction as an outage, not a bug."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from plangate.store.engine import is_outage, open_store
from plangate.store.goals import goal_status


def test_a_write_lock_held_past_the_busy_timeout_fails_the_transaction_as_an_outage(
    tmp_path: Path,
) -> None:
    """Given a SQLite store, and another program holding the database's write lock,
    When a transaction of the store cannot take the lock within its busy timeout,
    Then it fails with SQLAlchemy's OperationalError, which the stages wait out as an outage.
    """
    database = tmp_path / "plangate.db"
    store = open_store(f"sqlite:///{database}")
    try:
        with store.engine.connect() as connection:  # the pool's one connection, waiting less
            connection.exec_driver_sql("PRAGMA busy_timeout=50")
        other = sqlite3.connect(database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError) as failed, store.session() as session:
                goal_status(session, "g1")
        finally:
            other.execute("ROLLBACK")
            other.close()

        assert "database is locked" in str(failed.value)
        assert is_outage(failed.value)
        with store.session() as session:  # once the lock is free, the store goes on
            assert goal_status(session, "g1") is None
    finally:
        store.close()
