"""Write transactions run on a connection and a Session each thread keeps.

What a caller of `Store.session()` sees must not change: each transaction commits or rolls back
on its own, sees what others committed, and leaves nothing behind for the next one. Each test
runs on a SQLite file and on a real PostgreSQL (conftest's `store`), but where it says which.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from plangate.store import GoalRow, Store, open_store
from plangate.store.kept_sessions import KeptBudget, KeptSessions


def _kept(store: Store) -> KeptSessions:
    kept = store._kept
    assert kept is not None, "a SQLite file's or PostgreSQL's store keeps each thread's connection"
    return kept


def _add_goal(store: Store, goal_id: str, status: str = "submitted") -> None:
    with store.session() as session:
        session.add(GoalRow(id=goal_id, text="count tickets", status=status, meta={}))


def _status(store: Store, goal_id: str) -> str:
    with store.session() as session:
        return session.get_one(GoalRow, goal_id).status


def _in_thread(work: object) -> None:
    assert callable(work)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if failures:
        raise failures[0]


def test_a_transaction_sees_what_another_thread_committed_after_the_last_one_here(
    store: Store,
) -> None:
    """Given a goal this thread read (so its kept Session once held the row),
    When another thread changes it and commits,
    Then this thread's next transaction reads the new status, not the row it held before.
    """
    _add_goal(store, "g1")
    with store.session() as session:
        held = session.get_one(GoalRow, "g1")  # held here: a Session's map keeps it only weakly

    def move() -> None:
        with store.session() as session:
            session.get_one(GoalRow, "g1").status = "planning"

    _in_thread(move)

    assert _status(store, "g1") == "planning"
    assert held.status == "submitted"


def test_a_row_read_in_a_transaction_stays_readable_after_it(store: Store) -> None:
    """Given a goal read in a transaction, When the transaction ends, Then its loaded fields
    can still be read (as from any closed session), and the next transaction starts empty."""
    _add_goal(store, "g1")
    with store.session() as session:
        row = session.get_one(GoalRow, "g1")
    assert (row.id, row.status) == ("g1", "submitted")
    with store.session() as session:
        assert row not in session
        assert len(session.identity_map) == 0


def test_a_failed_transaction_rolls_back_and_the_thread_goes_on(store: Store) -> None:
    """Given a transaction that adds a goal whose id is taken (the flush fails at commit),
    When it raises, Then nothing of it is stored, and the same thread's next transaction
    commits as usual."""
    _add_goal(store, "g1")

    def add_two_one_taken() -> None:
        with store.session() as session:
            session.add(GoalRow(id="g2", text="count tickets", status="submitted", meta={}))
            session.add(GoalRow(id="g1", text="count again", status="submitted", meta={}))

    with pytest.raises(IntegrityError):
        add_two_one_taken()

    _add_goal(store, "g3")

    with store.session() as session:
        ids = set(session.execute(select(GoalRow.id)).scalars())
    assert ids == {"g1", "g3"}


def test_a_transaction_opened_inside_another_commits_on_its_own(store: Store) -> None:
    """Given a transaction in which, before it writes, the same thread opens and commits a
    second one, Then both commit (the inner one on a connection of the pool)."""
    with store.session() as outer:
        _add_goal(store, "inner")
        outer.add(GoalRow(id="outer", text="count tickets", status="submitted", meta={}))

    assert _status(store, "inner") == "submitted"
    assert _status(store, "outer") == "submitted"


def test_threads_writing_at_once_all_commit(store: Store) -> None:
    """Given eight threads each adding twenty goals at once, Then all 160 are stored."""

    def add(worker: int) -> None:
        for n in range(20):
            _add_goal(store, f"w{worker}-{n}")

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    with store.session() as session:
        assert len(session.execute(select(GoalRow.id)).all()) == 160


def test_a_thread_that_ends_gives_its_connection_back(store: Store) -> None:
    """Given a thread that wrote once and ended, Then its kept connection is back in the pool."""
    _in_thread(lambda: _add_goal(store, "g1"))
    gc.collect()

    assert _kept(store).kept == 0
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_collection_while_a_thread_connects_gives_back_an_ended_threads_connection(
    store: Store,
) -> None:
    """Given a thread whose kept state outlived it in a reference cycle (a failed commit's
    exception kept in one), When the garbage collector runs while another thread takes its
    first connection, Then that thread commits (no lock is taken twice) and the ended thread's
    connection is given back."""
    _add_goal(store, "g1")

    def fail_once() -> None:
        try:
            _add_goal(store, "g1")  # taken: the commit fails
        except IntegrityError as exc:
            loop: list[object] = [exc]
            loop.append(loop)

    gc.disable()
    try:
        _in_thread(fail_once)
        event.listen(store.engine, "checkout", _collect)
        _in_thread(lambda: _add_goal(store, "g2"))
    finally:
        event.remove(store.engine, "checkout", _collect)
        gc.enable()

    assert _status(store, "g2") == "submitted"
    assert _kept(store).kept == 1  # the last thread's, until it is collected


def _collect(*_args: object) -> None:
    gc.collect()


def test_closing_the_store_midway_through_a_transaction_lets_it_commit_whole(store: Store) -> None:
    """Given a thread midway through a transaction of two goals, When the store is closed
    from another thread meanwhile (on SQLite it waits for the write lock; PostgreSQL has none),
    Then the transaction commits whole, and the store goes on committing (from its pool)."""
    first_added = threading.Event()
    may_go_on = threading.Event()

    def two_goals() -> None:
        with store.session() as session:
            session.add(GoalRow(id="first", text="count tickets", status="submitted", meta={}))
            session.flush()
            first_added.set()
            may_go_on.wait(timeout=5)
            session.add(GoalRow(id="second", text="count tickets", status="submitted", meta={}))

    writer = threading.Thread(target=two_goals)
    writer.start()
    assert first_added.wait(timeout=5)
    closer = threading.Thread(target=store.close)
    closer.start()
    may_go_on.set()
    writer.join(timeout=10)
    closer.join(timeout=10)

    assert _status(store, "first") == "submitted"
    assert _status(store, "second") == "submitted"


def test_a_closed_store_leaves_nothing_of_its_engine_behind_in_this_thread(tmp_path: Path) -> None:
    """Given stores opened, written to and closed one after another in one thread,
    Then none of their engines stays alive once they are dropped."""
    engines: list[weakref.ref[object]] = []
    for n in range(3):
        opened = open_store(f"sqlite:///{tmp_path / f'p{n}.db'}")
        _add_goal(opened, "g1")
        opened.close()
        engines.append(weakref.ref(opened.engine))
        del opened
    gc.collect()

    assert [ref() for ref in engines] == [None, None, None]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX's")
def test_a_forked_child_does_not_use_its_parents_kept_connection(tmp_path: Path) -> None:
    """Given a store this process wrote to (so this thread keeps a connection), When the
    process forks and the child writes, Then the child commits on a connection of its own
    (SQLite forbids carrying one across fork()), and the parent's stays usable."""
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        _a_forked_child_writes_on_its_own_connection(store)
    finally:
        store.close()


def _a_forked_child_writes_on_its_own_connection(store: Store) -> None:
    _add_goal(store, "parent")
    parents = _kept(store)._local.kept.connection.connection.driver_connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's cleanup
        try:
            _add_goal(store, "child")
            mine = _kept(store)._local.kept.connection.connection.driver_connection
            os.write(write, b"own" if mine is not parents else b"parent's")
        except BaseException as exc:
            os.write(write, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 300).decode()
    os.close(read)

    assert (status, said) == (0, "own")
    assert _status(store, "child") == "submitted"
    _add_goal(store, "parent again")


def test_threads_beyond_the_most_kept_use_the_pool(tmp_path: Path) -> None:
    """Given a store that keeps at most one thread's connection, held by this thread,
    When another thread writes, Then it commits on a pooled connection and keeps none."""
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        store._kept = KeptSessions(store.engine, store._sessions, most=1)
        store._begin = store._kept.begin
        _add_goal(store, "mine")
        _in_thread(lambda: _add_goal(store, "other"))

        assert store._kept.kept == 1
        assert _status(store, "other") == "submitted"
    finally:
        store.close()


def test_a_store_used_after_close_still_commits(tmp_path: Path) -> None:
    """Given a store this thread wrote to, When it is closed and used again (as an engine may
    be after dispose), Then the transaction commits on a pooled connection."""
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    _add_goal(store, "before")
    store.close()
    try:
        _add_goal(store, "after")

        assert _status(store, "after") == "submitted"
        assert _kept(store).kept == 0
    finally:
        store.close()


def test_an_in_memory_store_keeps_no_connections() -> None:
    """Each connection to `:memory:` is a database of its own: such a store uses its pool."""
    store = open_store("sqlite:///:memory:")
    try:
        assert store._kept is None
    finally:
        store.close()


@pytest.fixture
def two_keeping_threads(postgres_database_url: str) -> Iterator[tuple[Store, Worker, Worker]]:
    """A PostgreSQL store, and two threads that each keep a connection of it (and a pooled
    connection read through, so that every kind is dropped when the server drops them)."""
    store = open_store(postgres_database_url)
    first, second = Worker(), Worker()
    try:
        first.run(lambda: _add_goal(store, "g1"))
        second.run(lambda: _add_goal(store, "g2"))
        with store.reading() as session:
            session.execute(select(GoalRow.id)).all()
        assert _kept(store).kept == 2
        yield store, first, second
    finally:
        first.stop()
        second.stop()
        store.close()


@pytest.mark.postgres
def test_a_server_restart_fails_one_transaction_not_one_per_thread(
    two_keeping_threads: tuple[Store, Worker, Worker], postgres_database_url: str
) -> None:
    """Given two threads that each keep a PostgreSQL connection, When the server drops every
    connection (as a restart does), Then the first thread's next transaction fails as an
    outage, and the second's commits: its connection, as old as the lost one, is given back
    untried and a new one made."""
    from plangate.store.engine import is_outage

    store, first, second = two_keeping_threads
    _drop_every_connection(postgres_database_url)

    with pytest.raises(DBAPIError) as failed:
        first.run(lambda: _add_goal(store, "g3"))
    assert is_outage(failed.value)
    second.run(lambda: _add_goal(store, "g4"))
    first.run(lambda: _add_goal(store, "g5"))
    assert [_status(store, g) for g in ("g4", "g5")] == ["submitted", "submitted"]


@pytest.mark.postgres
def test_a_loss_found_by_a_read_gives_back_the_kept_connections_too(
    two_keeping_threads: tuple[Store, Worker, Worker], postgres_database_url: str
) -> None:
    """Given two threads that each keep a PostgreSQL connection, When the server drops every
    connection and a read (on a pooled connection) is the first to find it, Then that read
    fails as an outage and both threads' next transactions commit: no kept connection is
    tried after the loss."""
    from plangate.store.engine import is_outage

    store, first, second = two_keeping_threads
    _drop_every_connection(postgres_database_url)

    with pytest.raises(DBAPIError) as failed, store.reading() as session:
        session.execute(select(GoalRow.id)).all()
    assert is_outage(failed.value)
    first.run(lambda: _add_goal(store, "g3"))
    second.run(lambda: _add_goal(store, "g4"))
    assert [_status(store, g) for g in ("g3", "g4")] == ["submitted", "submitted"]


def test_stores_sharing_a_budget_keep_no_more_connections_than_it_allows(tmp_path: Path) -> None:
    """Given two stores that share a budget of one kept connection (as a process's PostgreSQL
    stores share theirs), When this thread writes to both, Then the first store keeps the
    connection and the second commits on its pool; once the first closes, the second keeps."""
    budget = KeptBudget(1)
    stores = [open_store(f"sqlite:///{tmp_path / f'p{n}.db'}") for n in (1, 2)]
    try:
        for store in stores:
            store._kept = KeptSessions(store.engine, store._sessions, most=budget)
            store._begin = store._kept.begin
        first, second = stores
        _add_goal(first, "g1")
        _add_goal(second, "g2")
        assert (_kept(first).kept, _kept(second).kept) == (1, 0)
        assert _status(second, "g2") == "submitted"

        first.close()
        _add_goal(second, "g3")
        assert _kept(second).kept == 1
    finally:
        for store in stores:
            store.close()


def _drop_every_connection(url: str) -> None:
    """Have the server drop every connection to the database but this one (as a restart does)."""
    from plangate.store.engine import make_engine

    killer = make_engine(url)
    try:
        with killer.begin() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        killer.dispose()


class Worker:
    """A thread of its own that runs what it is given, one call at a time."""

    def __init__(self) -> None:
        self._calls: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._results: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def run(self, call: Callable[[], object]) -> None:
        """Run `call` on the thread; raise what it raised."""
        self._calls.put(call)
        failure = self._results.get(timeout=30)
        if failure is not None:
            raise failure

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except BaseException as exc:  # handed to the caller
                self._results.put(exc)
            else:
                self._results.put(None)
