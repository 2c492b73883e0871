"""One SQLite store shared by several processes, as `plangate worker` runs them on one file.

SQLite lets one writer in at a time. The store hands that turn from process to process through
a lock the kernel keeps (and releases when its holder dies), so these tests use real processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from plangate.store import AuditRow, Store, audit, open_store
from plangate.store.engine import is_outage
from plangate.store.goals import goal_status
from tests.support import append_after_the_upgrade_and_verify, write_a_log_at_0012

WAIT = 10.0

# A second process: it writes an audit entry, says so, and commits when told (a line on stdin).
HOLDER = """
import sys
from plangate.store import audit, open_store
store = open_store(sys.argv[1], upgrade=False)
with store.session() as session:
    audit.append(session, "test.held", actor="holder")
    print("holding", flush=True)
    sys.stdin.readline()
store.close()
"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'plangate.db'}"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def holder(database_url: str, store: Store) -> Iterator[subprocess.Popen[str]]:
    """Another process in the middle of a write transaction on the same database."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "holding"
            yield process
        finally:
            process.kill()
            process.wait(WAIT)


def held_entries_seen_by_next_transaction(store: Store) -> tuple[threading.Thread, list[int]]:
    """Start a transaction in a thread; it records how many held entries it found."""
    seen: list[int] = []

    def count() -> None:
        with store.session() as session:
            kinds = select(func.count()).where(AuditRow.kind == "test.held")
            seen.append(session.execute(kinds).scalar_one())
            audit.append(session, "test.next", actor="test")

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    return thread, seen


def test_a_transaction_waits_for_another_process_to_commit_and_then_sees_its_writes(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    thread, seen = held_entries_seen_by_next_transaction(store)
    thread.join(0.5)
    assert thread.is_alive(), "a second writer got in while the first was in its transaction"
    assert holder.stdin is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()
    thread.join(WAIT)
    assert seen == [1]
    assert holder.wait(WAIT) == 0


def test_a_process_killed_inside_a_transaction_leaves_the_store_writable(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    thread, seen = held_entries_seen_by_next_transaction(store)
    holder.kill()
    # Well within SQLite's 30 s busy timeout: nothing of the dead process stays locked.
    thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == [0], "the killed process's transaction was rolled back"


def test_the_write_lock_s_waits_and_holds_are_counted_in_the_process_s_metrics(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    """Every process on the file takes turns in the lock: its held time bounds goals/s."""

    def lock_seconds(kind: str) -> tuple[float, float]:
        name = f"plangate_sqlite_write_lock_{kind}_seconds"
        total = REGISTRY.get_sample_value(f"{name}_sum")
        count = REGISTRY.get_sample_value(f"{name}_count")
        assert total is not None
        assert count is not None
        return total, count

    waited_before, held_before = lock_seconds("waited"), lock_seconds("held")
    thread, seen = held_entries_seen_by_next_transaction(store)
    thread.join(0.5)
    assert thread.is_alive()
    assert holder.stdin is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()
    thread.join(WAIT)
    assert seen == [1]
    waited, held = lock_seconds("waited"), lock_seconds("held")
    assert waited[1] - waited_before[1] == 1
    assert held[1] - held_before[1] == 1
    assert waited[0] - waited_before[0] >= 0.4, "the wait for the other process is counted"
    assert 0 < held[0] - held_before[0] < waited[0] - waited_before[0]


@pytest.mark.parametrize("through", ["the same store", "another store on the file"])
def test_a_transaction_keeps_the_other_threads_of_its_process_out_until_it_commits(
    database_url: str, store: Store, through: str
) -> None:
    other = store if through == "the same store" else open_store(database_url, upgrade=False)
    try:
        with store.session() as first:
            audit.append(first, "test.first", actor="test")
            done = threading.Event()

            def other_thread() -> None:
                with other.session() as session:
                    audit.append(session, "test.second", actor="test")
                done.set()

            threading.Thread(target=other_thread, daemon=True).start()
            assert not done.wait(0.2), "another thread got in during this thread's transaction"
        assert done.wait(WAIT)
    finally:
        if other is not store:
            other.close()
    with store.session() as session:
        kinds = list(session.execute(select(AuditRow.kind).order_by(AuditRow.seq)).scalars())
    assert kinds[-2:] == ["test.first", "test.second"]


def test_a_forked_child_writes_through_locks_of_its_own(store: Store) -> None:
    """A store opened before a fork serves the child as a process of its own.

    None of the child's threads is let in on the parent's turn, and none releases the parent's.
    """
    with store.session() as session:
        audit.append(session, "test.parent", actor="test")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            store.engine.dispose(close=False)  # as a forking program must: fresh connections

            def write() -> None:
                for _ in range(5):
                    with store.session() as session:
                        audit.append(session, "test.child", actor="test")

            threads = [threading.Thread(target=write) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with store.session() as session:
                kinds = select(func.count()).where(AuditRow.kind == "test.child")
                code = 0 if session.execute(kinds).scalar_one() == 20 else 2
        finally:
            os._exit(code)
    with store.session() as session:  # the parent writes on, meanwhile
        audit.append(session, "test.parent", actor="test")
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with store.session() as session:
        count = select(func.count()).where(AuditRow.kind == "test.child")
        assert session.execute(count).scalar_one() == 20


def test_the_schema_check_reads_the_same_revisions_alembic_does(tmp_path: Path) -> None:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from plangate.store import schema
    from plangate.store.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert schema.current_revision(engine) is None
    config = Config()
    config.set_main_option("script_location", "plangate.store:migrations")
    assert schema.head_revision() == ScriptDirectory.from_config(config).get_current_head()
    schema.upgrade(engine)
    with engine.connect() as connection:
        alembic_says = MigrationContext.configure(connection).get_current_revision()
    assert schema.current_revision(engine) == alembic_says == schema.head_revision()


def test_entries_written_before_per_goal_chains_still_verify_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """Given a store at revision 0012 whose audit log is one chain of two entries,
    When it is upgraded and a goal appends entries of its own,
    Then the old entries verify as one legacy chain beside the goal's new chain, and an edit
    of an old entry is still found.
    """
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    write_a_log_at_0012(url)

    store = open_store(url)
    append_after_the_upgrade_and_verify(store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1"))
    assert audit.verify(store).broken_at == 1


def test_a_reader_does_not_wait_for_a_writer_that_has_not_committed(store: Store) -> None:
    """Given a transaction that has written and not committed (holding SQLite's write lock),
    When another thread reads in `Store.reading`,
    Then the read ends at once and sees the last commit, not the pending write.
    """
    written, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.session() as session:
            audit.append(session, "test.pending", actor="writer")
            written.set()
            assert release.wait(30)

    holder = threading.Thread(target=writer)
    holder.start()
    try:
        assert written.wait(30)
        read: list[int] = []
        reader = threading.Thread(target=lambda: read.append(count_of(store, "test.pending")))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the reader waited for the writer"
        assert read == [0]
    finally:
        release.set()
        holder.join(30)
    assert count_of(store, "test.pending") == 1


def count_of(store: Store, kind: str) -> int:
    with store.reading() as session:
        return session.scalar(select(func.count()).where(AuditRow.kind == kind)) or 0


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


def test_commands_that_only_read_leave_nothing_new_in_the_data_folder(tmp_path: Path) -> None:
    """Given a data folder with its store migrated and one goal run,
    When `status`, `goals list` and `audit verify` read it,
    Then no file appears beside the store: the writers' lock file was made by any command
    that opened the store, though operate.md says a reading command creates nothing.
    """
    from tests.support import plangate_in

    ran = plangate_in(tmp_path, "run", "How many tickets are open right now?", "--yes", "--json")
    assert ran.returncode == 0, ran.stderr
    goal_id = json.loads(ran.stdout.splitlines()[0])["goal_id"]
    (tmp_path / "plangate.db-writer.lock").unlink()
    before = sorted(path.name for path in tmp_path.iterdir())

    for args in (("status", goal_id), ("goals", "list"), ("audit", "verify")):
        read = plangate_in(tmp_path, *args)
        assert read.returncode == 0, (args, read.stderr)

    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_a_goal_with_entries_from_before_per_goal_chains_is_read_in_the_order_written(
    store: Store,
) -> None:
    """Given a goal submitted and held before per-goal chains (its entries in the legacy
    chain) and cancelled after (in its own chain), its row saying cancelled,
    When the records are checked against the log, Then they agree: read chain by chain, the
    goal's own chain sorted before the legacy one, and its last move read as `held`.
    """
    from plangate.store import AuditRow, GoalRow, audit_records
    from plangate.store.audit import LEGACY_CHAIN

    goal_id = "0" * 31 + "1"  # sorts before the legacy chain's name
    entries = [
        (LEGACY_CHAIN, 1, "goal.submitted", {"text": "count", "metadata": {}}),
        (LEGACY_CHAIN, 2, "goal.held", {"plan_id": "p", "reason": "a person decides"}),
        (goal_id, 1, "goal.cancelled", {"reason": "not today"}),
    ]
    with store.session() as session:
        session.add(
            GoalRow(
                id=goal_id,
                text="count",
                status="cancelled",
                status_reason="not today",
                meta={},
                created_at=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),  # as its submission's entry
            )
        )
        for seq, (chain, chain_seq, kind, data) in enumerate(entries, start=1):
            session.add(
                AuditRow(
                    seq=seq,
                    chain=chain,
                    chain_seq=chain_seq,
                    at=f"2026-01-01T00:00:0{seq}+00:00",
                    goal_id=goal_id,
                    kind=kind,
                    actor="t",
                    data=data,
                    prev_hash="0" * 64,
                    hash=f"{seq:064x}",
                )
            )

    assert audit_records.disagreement(store) is None
