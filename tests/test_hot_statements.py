"""Hot statements: on SQLite's own cursor they do what SQLAlchemy would, and fail as it would.

Each test runs on a real SQLite file and on a real PostgreSQL (where they go through
SQLAlchemy), against the store's own tables.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from plangate.config import Settings
from plangate.store import AuditRow, GoalRow, Store, open_store
from plangate.store.hot_statements import HotStatement
from plangate.store.models import AuditChainRow

CHAINS = cast(Table, AuditChainRow.__table__)
LOG = cast(Table, AuditRow.__table__)
HEAD = HotStatement(select(CHAINS.c.seq, CHAINS.c.hash).where(CHAINS.c.chain == bindparam("c")))
ADD_HEAD = HotStatement(insert(CHAINS), ("chain", "seq", "hash"))
MOVE_HEAD = HotStatement(
    update(CHAINS).where(CHAINS.c.chain == bindparam("c")).values(seq=bindparam("s"))
)
COLUMNS = ("chain", "chain_seq", "at", "goal_id", "kind", "actor", "data", "prev_hash", "hash")
ADD_ENTRY = HotStatement(insert(LOG), COLUMNS)


def entry(chain: str, seq: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "chain": chain,
        "chain_seq": seq,
        "at": "2026-12-04T10:00:00+00:00",
        "goal_id": None,
        "kind": "test.entry",
        "actor": "test",
        "data": data,
        "prev_hash": "0" * 64,
        "hash": f"{chain}-{seq}".ljust(64, "0"),
    }


def test_rows_written_and_read_are_the_ones_sqlalchemy_reads(store: Store) -> None:
    """Given a head inserted, moved and read back, and an entry with nested JSON data,
    Then the reads return plain tuples of what was written, and SQLAlchemy's ORM reads the
    entry's data back as the same dict (it was encoded as SQLAlchemy encodes JSON).
    """
    data = {"plan_id": "p1", "steps": [1, 2], "reason": 'ünïcode "quoted"'}
    with store.session() as session:
        assert HEAD.rows(session, {"c": "g1"}) == []
        assert ADD_HEAD.rows(session, {"chain": "g1", "seq": 1, "hash": "h1"}) == []
        MOVE_HEAD.rows(session, {"c": "g1", "s": 7})
        ADD_ENTRY.rows(session, entry("g1", 1, data))
        assert HEAD.rows(session, {"c": "g1"}) == [(7, "h1")]

    with store.reading() as session:
        stored = session.execute(select(AuditRow).where(AuditRow.chain == "g1")).scalar_one()
        assert stored.data == data
        assert session.get_one(AuditChainRow, "g1").seq == 7


def test_a_failing_statement_raises_sqlalchemys_error_and_rolls_back_its_transaction(
    store: Store,
) -> None:
    """Given an entry already stored, a second with the same place in its chain
    Then fails with SQLAlchemy's IntegrityError, and nothing of its transaction is kept."""
    with store.session() as session:
        ADD_ENTRY.rows(session, entry("g2", 1, {}))

    def head_then_the_same_entry_again() -> None:
        with store.session() as session:
            ADD_HEAD.rows(session, {"chain": "g2", "seq": 1, "hash": "h"})
            ADD_ENTRY.rows(session, entry("g2", 1, {}) | {"hash": "another".ljust(64, "0")})

    with pytest.raises(IntegrityError):
        head_then_the_same_entry_again()

    with store.reading() as session:
        assert session.get(AuditChainRow, "g2") is None


def test_what_sqlalchemy_would_work_out_at_each_execution_is_refused_on_sqlite(
    settings: Settings,
) -> None:
    """A timestamp converted on its way out, a column's default made at run time, an IN list:
    each is SQLAlchemy's work at every execution, so such a statement is refused, not run
    without it (a default would be written as NULL)."""
    goals = cast(Table, GoalRow.__table__)
    store = open_store(settings.resolved_database_url())
    refused = {
        "converted on the way out": HotStatement(select(GoalRow.created_at)),
        "take a default made at run time": HotStatement(insert(goals), ("id", "text", "status")),
        "rendered at run time": HotStatement(
            select(goals.c.id).where(goals.c.id.in_(bindparam("ids", expanding=True)))
        ),
    }
    try:
        for said, statement in refused.items():
            with store.session() as session, pytest.raises(TypeError, match=said):
                statement.rows(session, {"id": "g", "text": "t", "status": "submitted", "ids": []})
    finally:
        store.close()


def test_a_value_that_does_not_convert_fails_as_it_does_under_sqlalchemy(store: Store) -> None:
    """Data that is not JSON (a set) fails with the encoder's TypeError on either store, and
    nothing of its transaction is kept."""

    def unconvertible_entry() -> None:
        with store.session() as session:
            ADD_ENTRY.rows(session, entry("g3", 1, {"tags": {"a", "b"}}))

    with pytest.raises(TypeError, match="not JSON serializable"):
        unconvertible_entry()
    with store.reading() as session:
        assert session.execute(select(AuditRow).where(AuditRow.chain == "g3")).first() is None
