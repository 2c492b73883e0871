"""Hot statements: on SQLite's own cursor they do what SQLAlchemy would, and fail as it would.

Each test runs on a real SQLite file and on a real PostgreSQL (where they go through
SQLAlchemy), against the store's own tables.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, PendingRollbackError
from sqlalchemy.orm import Session

from plangate.config import Settings
from plangate.store import AuditRow, GoalRow, Store, open_store
from plangate.store.hot_statements import HotStatement
from plangate.store.models import AuditChainRow
from schemas.messages import utcnow

CHAINS = cast(Table, AuditChainRow.__table__)
LOG = cast(Table, AuditRow.__table__)
HEAD = HotStatement(select(CHAINS.c.seq, CHAINS.c.hash).where(CHAINS.c.chain == bindparam("c")))
ADD_HEAD = HotStatement(insert(CHAINS), ("chain", "seq", "hash"))
MOVE_HEAD = HotStatement(
    update(CHAINS).where(CHAINS.c.chain == bindparam("c")).values(seq=bindparam("s"))
)
TABLES = itertools.count()  # a fresh table name per test
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


def test_a_session_that_runs_a_second_transaction_runs_its_statements_inside_it(
    store: Store,
) -> None:
    """Given one session whose first transaction committed a head,
    When its second transaction moves that head and then rolls back,
    Then the move is gone (it ran inside the second transaction, not on its own), and the
    session's third transaction still reads and writes.
    """
    with Session(store.engine) as session:
        ADD_HEAD.rows(session, {"chain": "g3", "seq": 1, "hash": "h"})
        session.commit()
        MOVE_HEAD.rows(session, {"c": "g3", "s": 2})
        assert HEAD.rows(session, {"c": "g3"}) == [(2, "h")]
        session.rollback()
        assert HEAD.rows(session, {"c": "g3"}) == [(1, "h")]
        MOVE_HEAD.rows(session, {"c": "g3", "s": 3})
        session.commit()

    with store.reading() as session:
        assert session.get_one(AuditChainRow, "g3").seq == 3


def test_after_a_failed_flush_a_statement_is_refused_until_the_session_rolls_back(
    store: Store,
) -> None:
    """Given a session whose flush failed (a duplicate row), the error caught,
    When a hot statement runs next in that session,
    Then SQLAlchemy refuses it (its transaction is gone), and nothing of it is written.
    """
    with store.session() as session:
        ADD_HEAD.rows(session, {"chain": "g4", "seq": 1, "hash": "h"})

    with Session(store.engine) as session:
        assert HEAD.rows(session, {"c": "g4"}) == [(1, "h")]
        session.add(AuditChainRow(chain="g4", seq=5, hash="again"))
        with pytest.raises(IntegrityError):
            session.flush()
        with pytest.raises(PendingRollbackError):
            MOVE_HEAD.rows(session, {"c": "g4", "s": 9})
        session.rollback()

    with store.reading() as session:
        assert session.get_one(AuditChainRow, "g4").seq == 1


def test_what_sqlalchemy_would_work_out_at_each_execution_is_refused_on_sqlite(
    settings: Settings,
) -> None:
    """A default made from SQLAlchemy's execution context, an IN list: each is SQLAlchemy's
    work at every execution, so such a statement is refused, not run without it (a default
    would be written as NULL)."""
    goals = cast(Table, GoalRow.__table__)
    by_context = Table(
        "by_context",
        MetaData(),
        Column("id", String, primary_key=True),
        Column("made", String, default=lambda context: context.current_parameters["id"]),
    )
    store = open_store(settings.resolved_database_url())
    refused = {
        "with its execution context": HotStatement(insert(by_context), ("id",)),
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


def test_a_columns_default_is_made_at_each_insert_as_sqlalchemy_makes_it(store: Store) -> None:
    """Columns left out take their defaults, each made anew: a constant (0), a call without
    arguments (`dict`, `utcnow`), converted for the column (JSON, a timestamp)."""
    insert_goal = HotStatement(insert(cast(Table, GoalRow.__table__)), ("id", "text", "status"))
    before = utcnow()
    with store.session() as session:
        for goal_id in ("d1", "d2"):
            insert_goal.rows(session, {"id": goal_id, "text": "t", "status": "submitted"})
    with store.reading() as session:
        first, second = (session.get_one(GoalRow, goal_id) for goal_id in ("d1", "d2"))
    assert (first.meta, first.trace_headers, first.reconciled) == ({}, {}, 0)
    after = utcnow()
    made = [naive(row.created_at) for row in (first, second)]
    assert naive(before) <= made[0] <= made[1] <= naive(after)
    assert naive(before) <= naive(second.updated_at) <= naive(after)


def naive(moment: datetime) -> datetime:
    """A UTC time as either store reads it back (SQLite keeps no zone)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def test_columns_converted_on_the_way_out_read_as_sqlalchemy_reads_them(store: Store) -> None:
    """JSON and timestamps come back as the ORM gives them; text and integers as they are."""
    goals = cast(Table, GoalRow.__table__)
    read = HotStatement(
        select(goals.c.status, goals.c.metadata, goals.c.created_at, goals.c.reconciled).where(
            goals.c.id == bindparam("goal_id")
        )
    )
    with store.session() as session:
        session.add(GoalRow(id="c1", text="t", status="submitted", meta={"team": ["a", 1]}))
    with store.reading() as session:
        hot = read.first(session, {"goal_id": "c1"})
        missing = read.first(session, {"goal_id": "none"})
        row = session.get_one(GoalRow, "c1")
        expected = (row.status, row.meta, row.created_at, row.reconciled)

    assert hot == expected
    assert isinstance(hot[2], datetime)
    assert missing is None


def test_a_default_made_by_a_call_is_made_anew_for_each_row(store: Store) -> None:
    """A counter as the default: two rows, two values (a value made once would repeat)."""
    counted = Table(
        f"counted_{next(TABLES)}",
        MetaData(),
        Column("id", String(8), primary_key=True),
        Column("n", Integer, default=itertools.count(1).__next__),
    )
    counted.create(store.engine)
    add = HotStatement(insert(counted), ("id",))
    try:
        with store.session() as session:
            for row_id in ("a", "b"):
                add.rows(session, {"id": row_id})
        with store.reading() as session:
            made = session.execute(select(counted.c.id, counted.c.n).order_by(counted.c.id)).all()
    finally:
        counted.drop(store.engine)
    assert [tuple(row) for row in made] == [("a", 1), ("b", 2)]


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


@pytest.mark.postgres
def test_what_psycopg_cannot_do_as_sqlalchemy_does_is_refused_on_postgres(
    postgres_database_url: str,
) -> None:
    """A number read back (SQLAlchemy converts it by the driver's type code, known only from a
    result), the key of an INSERT whose table does not make it (psycopg has no lastrowid):
    each is refused with what it is, not run differently from SQLAlchemy."""
    metadata = MetaData()
    priced = Table(
        f"priced_{next(TABLES)}",
        metadata,
        Column("id", String(8), primary_key=True),
        Column("price", Numeric(10, 2)),
    )
    store = open_store(postgres_database_url)
    try:
        priced.create(store.engine)
        with store.session() as session, pytest.raises(TypeError, match="type code"):
            HotStatement(select(priced.c.price)).rows(session, {})
        with store.session() as session, pytest.raises(TypeError, match="does not make"):
            HotStatement(insert(priced), ("id",)).inserted_id(session, {"id": "a"})
    finally:
        store.close()
