"""The store on a real PostgreSQL: migrations, claims and the audit chain under concurrency.

Each test gets a database of its own (`postgres_database_url`); threads race on purpose, lined up
by a barrier so that their transactions really overlap.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from subprocess import PIPE
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from executor_worker.ledger import StepLedger
from plangate.client import Client
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.errors import ConfigError, PlangateError, StoreUnavailable
from plangate.store import AuditRow, StepRunRow, Store, audit, open_store, schema
from plangate.store.claims import insert_if_absent
from plangate.store.engine import make_engine
from plangate.tools import tool
from schemas import Plan, Step, utcnow
from tests.conftest import SEED_GOAL
from tests.servers import refusing_connections
from tests.support import (
    HELD,
    append_after_the_upgrade_and_verify,
    eventually,
    only_plan,
    outer_environment,
    running_pipeline,
    step_runs,
    write_a_log_at_0012,
)

pytestmark = pytest.mark.postgres

T = TypeVar("T")
THREADS = 8
WAIT = 30.0


@pytest.fixture
def store(postgres_database_url: str) -> Iterator[Store]:
    """A migrated plangate store in a fresh PostgreSQL database."""
    opened = open_store(postgres_database_url)
    try:
        yield opened
    finally:
        opened.close()


def race(work: Callable[[int], T], threads: int = THREADS) -> list[T]:
    """Run `work(n)` in `threads` threads released together; return the results in order."""
    start = threading.Barrier(threads, timeout=WAIT)

    def lined_up(n: int) -> T:
        start.wait()
        return work(n)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lined_up, range(threads), timeout=WAIT))


def test_the_store_opens_and_migrates_an_empty_postgres_database(
    postgres_database_url: str,
) -> None:
    """Given an empty PostgreSQL database.

    When a worker checks its schema, then the embedded mode opens it (which upgrades),
    Then the worker is refused with what to run, and after the upgrade the schema is at the
    newest revision, holds plangate's tables, and a worker opens it.
    """
    # Checked on an engine of our own: `open_store(url, upgrade=False)` does not yet dispose
    # its engine when it refuses, and the pooled connection it leaks fails the test.
    engine = make_engine(postgres_database_url)
    try:
        with pytest.raises(ConfigError, match="run `plangate db upgrade` first"):
            schema.require_current(engine)
    finally:
        engine.dispose()

    upgraded = open_store(postgres_database_url)
    try:
        engine = upgraded.engine
        assert engine.dialect.name == "postgresql"
        assert schema.current_revision(engine) == schema.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"goals", "plans", "step_runs", "outbox", "audit_log", "audit_chains"} <= tables
    finally:
        upgraded.close()
    open_store(postgres_database_url, upgrade=False).close()


def test_a_second_upgrade_changes_nothing(postgres_database_url: str) -> None:
    """Given a PostgreSQL database already at the newest revision.

    When it is upgraded again,
    Then the upgrade reports it was already at the head.
    """
    open_store(postgres_database_url).close()
    again = open_store(postgres_database_url, upgrade=False)
    try:
        head = schema.head_revision()
        assert schema.upgrade(again.engine) == (head, head)
    finally:
        again.close()


def test_racing_step_claims_have_exactly_one_winner(store: Store) -> None:
    """Given eight executors about to run the same step of the same plan.

    When they all claim it at once (`INSERT ... ON CONFLICT DO NOTHING`), for twenty steps,
    Then each step has exactly one winner, the others are told they lost, and each step has
    one row, the winner's.
    """
    steps = [f"step-{n}" for n in range(20)]

    def claim(step_id: str) -> Callable[[int], bool]:
        def attempt(n: int) -> bool:
            with store.session() as session:
                values = {
                    "plan_id": "plan-1",
                    "step_id": step_id,
                    "goal_id": "goal-1",
                    "tool": "notify_oncall",
                    "status": "running",
                    "error": f"claimed by executor {n}",  # says who won, read back below
                }
                return insert_if_absent(session, StepRunRow, values)

        return attempt

    for step_id in steps:
        won = race(claim(step_id))
        assert won.count(True) == 1, f"{step_id}: {won.count(True)} winners"
        with store.session() as session:
            row = session.get_one(StepRunRow, ("plan-1", step_id))
            assert row.error == f"claimed by executor {won.index(True)}"

    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(StepRunRow)) == len(steps)


@pytest.mark.parametrize(
    "already_started",
    [
        pytest.param(
            False,
            id="first-entries",
        ),
        pytest.param(True, id="chain-already-started"),
    ],
)
def test_concurrent_audit_appends_form_one_chain_that_verifies(
    store: Store, already_started: bool
) -> None:
    """Given an audit log (empty, or already holding an entry).

    When eight threads each append ten entries, all at once, each in its own transaction,
    Then the log is one line: seq runs 1..n without a gap or a fork, each entry follows the one
    before, and the chain verifies.
    """
    before = 0
    if already_started:
        with store.session() as session:
            audit.append(session, "test.started", actor="setup")
        before = 1
    per_thread = 10

    def append_entries(n: int) -> int:
        for k in range(per_thread):
            with store.session() as session:
                audit.append(
                    session, "test.append", actor=f"thread-{n}", data={"thread": n, "k": k}
                )
        return n

    race(append_entries)

    total = before + THREADS * per_thread
    with store.session() as session:
        rows = list(session.execute(select(AuditRow).order_by(AuditRow.seq)).scalars())
    assert [row.seq for row in rows] == list(range(1, total + 1))
    assert all(row.prev_hash == prev.hash for prev, row in itertools.pairwise(rows))
    report = audit.verify(store)
    assert report.ok, report.problem
    assert report.entries == total


def test_two_goals_append_to_the_audit_log_without_waiting_for_each_other(store: Store) -> None:
    """Given a transaction that has appended an entry for goal A and not committed,
    When another transaction appends an entry for goal B (and a third for goal A),
    Then B's commits at once, A's second waits for the first to commit, and the log verifies
    as two chains: no row is locked by every auditing transaction.
    """
    appended_a, release_a = threading.Event(), threading.Event()

    def hold_goal_a() -> None:
        with store.session() as session:
            audit.append(session, "test.first", actor="a", goal_id="goal-a")
            appended_a.set()
            assert release_a.wait(WAIT)

    holder = threading.Thread(target=hold_goal_a)
    holder.start()
    try:
        assert appended_a.wait(WAIT)
        with ThreadPoolExecutor(2) as pool:
            other_goal = pool.submit(append_one, store, "goal-b")
            same_goal = pool.submit(append_one, store, "goal-a")
            other_goal.result(timeout=WAIT)  # B did not wait for A's open transaction
            assert not same_goal.done()  # A's second entry waits for A's first to commit
            release_a.set()
            same_goal.result(timeout=WAIT)
    finally:
        release_a.set()
        holder.join(WAIT)

    report = audit.verify(store)
    assert report.ok, report.problem
    assert (report.entries, report.chains) == (3, 2)


def append_one(store: Store, goal_id: str) -> None:
    with store.session() as session:
        audit.append(session, "test.next", actor="b", goal_id=goal_id)


def test_goals_appending_at_once_each_form_a_chain_that_verifies(store: Store) -> None:
    """Given eight threads, each appending ten entries for its own goal at the same time,
    Then every goal's chain runs 1..10 without a gap, the log's order numbers are distinct, and
    the whole log verifies.
    """

    def append_entries(n: int) -> int:
        for k in range(10):
            with store.session() as session:
                audit.append(session, "test.append", actor=f"t{n}", goal_id=f"g{n}", data={"k": k})
        return n

    race(append_entries)

    with store.session() as session:
        rows = list(session.execute(select(AuditRow).order_by(AuditRow.seq)).scalars())
    assert len({row.seq for row in rows}) == THREADS * 10
    for n in range(THREADS):
        assert [r.chain_seq for r in rows if r.chain == f"g{n}"] == list(range(1, 11))
    assert audit.verify(store).ok


def test_the_seed_goal_completes_on_postgres_with_one_page(
    settings: Settings, postgres_database_url: str
) -> None:
    """Given the embedded pipeline on a PostgreSQL store, and the seed goal held for a person.

    When alice approves its plan,
    Then the goal completes, every step succeeded, one page is sent, and the audit chain in
    PostgreSQL verifies.
    """
    with running_pipeline(settings, database_url=postgres_database_url) as pipeline:
        assert pipeline.store.engine.dialect.name == "postgresql"
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=10)
        plan = only_plan(pipeline.store, goal_id)

        pipeline.approve(plan.plan_id, "alice")

        goal = pipeline.wait_for(goal_id, timeout=10)
        assert goal.status == "completed", goal.status_reason
        assert step_runs(pipeline.store, plan.plan_id) == {
            "count": "succeeded",
            "sla": "succeeded",
            "notify": "succeeded",
        }
        assert audit.verify(pipeline.store).ok
    [page] = read_notifications()
    assert page["goal_id"] == goal_id


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_a_takeover_waits_for_the_late_result_of_the_run_whose_lease_ran_out(
    store: Store, idempotent: bool
) -> None:
    """Given a write step whose claim's lease has run out, and the executor that claimed it
    recording its result just now (its transaction not yet committed),
    When another executor claims the step,
    Then that claim waits for the transaction, and finds the step succeeded: it neither runs
    the step again nor marks it unknown.
    """

    @tool(effect="write", idempotent=idempotent)
    def page_oncall() -> str:
        """Page the on-call engineer."""
        return "paged"

    plan = Plan(
        plan_id="plan-1", goal_id="goal-1", revision=1, steps=(Step(id="page", tool="page_oncall"),)
    )
    step = plan.steps[0]
    key = (StepRunRow.plan_id == "plan-1", StepRunRow.step_id == "page")
    expired = utcnow() - timedelta(seconds=1)
    with store.session() as session:
        claimed = {"goal_id": "goal-1", "tool": "page_oncall", "status": "running", "attempt": 1}
        claimed |= {"plan_id": "plan-1", "step_id": "page", "lease_until": expired}
        insert_if_absent(session, StepRunRow, claimed | {"started_at": expired})
    recording, committing = threading.Event(), threading.Event()

    def record_late() -> None:
        with store.session() as session:
            session.execute(update(StepRunRow).where(*key).values(status="succeeded"))
            recording.set()
            committing.wait(WAIT)

    def waiting_for_locks() -> int:
        with store.session() as session:
            waiting = select(func.count()).where(text("wait_event_type = 'Lock'"))
            return int(session.scalar(waiting.select_from(text("pg_stat_activity"))) or 0)

    with ThreadPoolExecutor(2) as pool:
        late = pool.submit(record_late)
        assert recording.wait(WAIT)
        call_key = "0123456789abcdef0123456789abcdef01234567"  # the key a claim records
        takeover = pool.submit(StepLedger(store, plan).claim, step, page_oncall.spec, call_key)
        deadline = time.monotonic() + WAIT
        while not waiting_for_locks() and time.monotonic() < deadline and not takeover.done():
            time.sleep(0.01)  # polling PostgreSQL until the claim waits on the row's lock
        committing.set()
        late.result(WAIT)
        claim = takeover.result(WAIT)

    assert (claim.kind, claim.status) == ("done", "succeeded")
    with store.session() as session:
        row = session.execute(select(StepRunRow).where(*key)).scalar_one()
        assert (row.status, row.attempt) == ("succeeded", 1)


def test_a_log_written_before_per_goal_chains_upgrades_and_verifies(
    postgres_database_url: str,
) -> None:
    """Given a PostgreSQL store at 0012 with two entries, upgraded, the database numbers new
    entries after the old ones, and both chains verify."""
    write_a_log_at_0012(postgres_database_url)
    upgraded = open_store(postgres_database_url)
    try:
        append_after_the_upgrade_and_verify(upgraded)
    finally:
        upgraded.close()


def test_connections_dropped_by_the_server_fail_one_transaction_as_an_outage_then_reconnect(
    store: Store, postgres_database_url: str
) -> None:
    """Given a store whose pooled connections the server has dropped (as a restart does),
    When the next transactions run,
    Then the first fails with an error that counts as an outage (the stages wait it out; no
    message is dead-lettered) and the next succeeds on a new connection: there is no ping
    before every transaction to find dead connections early.
    """
    from plangate.store.engine import is_outage

    assert two_pooled_connections_dropped_by_the_server(store, postgres_database_url) >= 1

    with pytest.raises(DBAPIError) as failed, store.session() as session:
        session.execute(text("SELECT 1"))
    assert is_outage(failed.value)
    for _ in range(3):
        with store.session() as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1


def test_a_hot_statement_on_a_dropped_connection_fails_once_as_an_outage_then_reconnects(
    store: Store, postgres_database_url: str
) -> None:
    """Given a store whose pooled connections the server has dropped,
    When the next transactions run a hot statement (on psycopg's own cursor, past SQLAlchemy),
    Then the first fails as an outage, with SQLAlchemy's own error for a lost connection, and
    the next ones succeed: SQLAlchemy dropped it and the other pooled one, as for a statement
    of its own.
    """
    from plangate.store.engine import is_outage
    from plangate.store.goals import goal_status

    assert two_pooled_connections_dropped_by_the_server(store, postgres_database_url) >= 1

    with pytest.raises(DBAPIError) as failed, store.session() as session:
        goal_status(session, "no-such-goal")
    assert is_outage(failed.value)
    assert failed.value.connection_invalidated  # SQLAlchemy's own error: it saw the loss
    for _ in range(3):
        with store.session() as session:
            assert goal_status(session, "no-such-goal") is None


def two_pooled_connections_dropped_by_the_server(store: Store, url: str) -> int:
    """Leave two connections in the store's pool, have the server drop them (as a restart
    does); return how many connections it dropped."""
    with store.session() as session:
        with store.session() as other:
            other.execute(text("SELECT 1"))
        session.execute(text("SELECT 1"))
    killer = make_engine(url)
    try:
        with killer.begin() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
    finally:
        killer.dispose()


def test_a_snapshot_reads_every_statement_at_one_moment(store: Store) -> None:
    """`status` read a goal's row, then its decision, each at its own moment on PostgreSQL: a
    goal moved between the two was shown `proposed` beside the decision that held it."""
    with store.session() as session:
        session.execute(text("CREATE TABLE moments (n integer)"))
        session.execute(text("INSERT INTO moments VALUES (1)"))

    with store.snapshot() as session:
        first = session.execute(text("SELECT n FROM moments")).scalar_one()
        with store.session() as writer:  # another process moving it meanwhile
            writer.execute(text("UPDATE moments SET n = 2"))
        again = session.execute(text("SELECT n FROM moments")).scalar_one()
    with store.reading() as session:
        now = session.execute(text("SELECT n FROM moments")).scalar_one()

    assert (first, again, now) == (1, 1, 2)


def test_two_upgrades_at_once_of_an_empty_database_both_succeed(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Given an empty PostgreSQL database,
    When two `plangate db upgrade` run at once (two pods of the migration Job),
    Then both exit 0: one creates the schema, the other waits and finds it current. The second
    failed ("duplicate key value violates unique constraint"), said as a wrong database URL.
    """
    env = {**outer_environment(), "PLANGATE_DATABASE_URL": postgres_database_url}
    command = [sys.executable, "-m", "plangate", "db", "upgrade"]
    runs = [
        subprocess.Popen(command, env=env, cwd=tmp_path, stdout=PIPE, stderr=PIPE, text=True)
        for _ in range(2)
    ]
    said = [run.communicate(timeout=60) for run in runs]

    assert [run.returncode for run in runs] == [0, 0], said
    outputs = sorted(stdout for stdout, _ in said)  # "created ..." before "the schema ..."
    assert "created the schema" in outputs[0], outputs
    assert "is already at" in outputs[1], outputs


def test_an_upgrade_waiting_for_another_says_so_then_goes_on(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Given a session holding the upgrade lock (a migration Job stuck mid-way),
    When `plangate db upgrade` runs, Then it says it waits for another upgrade, and goes on
    once the lock is let go: it waited in silence, for ever if the session never ended."""
    env = {**outer_environment(), "PLANGATE_DATABASE_URL": postgres_database_url}
    said = tmp_path / "stderr.txt"
    engine = make_engine(postgres_database_url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": schema._UPGRADE_LOCK})
            with said.open("w") as stderr:
                upgrade = subprocess.Popen(
                    [sys.executable, "-m", "plangate", "db", "upgrade"],
                    env=env,
                    cwd=tmp_path,
                    stdout=PIPE,
                    stderr=stderr,
                    text=True,
                )
                eventually(
                    lambda: "waiting for another `plangate db upgrade`" in said.read_text(),
                    timeout=30,
                    what="the upgrade saying it waits",
                )
                assert upgrade.poll() is None
                holder.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": schema._UPGRADE_LOCK}
                )
                holder.commit()
                stdout, _ = upgrade.communicate(timeout=60)
    finally:
        engine.dispose()

    assert upgrade.returncode == 0, said.read_text()
    assert "created the schema" in stdout


def test_a_client_call_while_the_database_is_down_raises_store_unavailable(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """A service catching PlangateError got SQLAlchemy's OperationalError while the database
    restarted, from the first call after it too; and a closed Client went on working."""
    open_store(postgres_database_url).close()
    settings = Settings(database_url=postgres_database_url, data_dir=tmp_path)
    client = Client(settings)
    try:
        with (
            refusing_connections(postgres_database_url),
            pytest.raises(StoreUnavailable, match="the store does not answer") as raised,
        ):
            client.status("0123456789abcdef")
        assert isinstance(raised.value, PlangateError)
    finally:
        client.close()

    with pytest.raises(ConfigError, match="this Client is closed"):
        client.status("0123456789abcdef")


def test_a_client_call_the_database_refuses_for_now_says_what_it_said_and_what_to_do(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Given a Client whose connections have a lock_timeout of 300 ms (its URL's `options`),
    When a call waits on a lock another session keeps (a table locked by a migration, say),
    Then it raises StoreUnavailable saying what PostgreSQL said (a lock not granted in time)
    and what to look at; it said "the store does not answer" and to check the database is
    up, which it was.
    """
    open_store(postgres_database_url).close()
    url = make_url(postgres_database_url).update_query_dict({"options": "-c lock_timeout=300"})
    settings = Settings(database_url=url.render_as_string(False), data_dir=tmp_path)
    admin = make_url(postgres_database_url).set(drivername="postgresql").render_as_string(False)
    with Client(settings) as client, psycopg.connect(admin) as holder:
        holder.execute("LOCK TABLE goals IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable) as raised:
            client.status("0123456789abcdef")

    said = str(raised.value)
    assert said.startswith(
        "the store refuses work for now: the database did not grant a lock in time "
        "(lock_timeout) (canceling statement due to lock timeout); another transaction held "
        "it; if this lasts, pg_locks shows which"
    ), said
    assert "does not answer" not in said
