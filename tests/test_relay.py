"""The outbox relay: rows left unsent are published later, once, without holding the store.

On a real Redis, and on one whose port nothing listens on (a publish there retries for a couple
of seconds and then gives up), with a real SQLite and PostgreSQL store. SQLite has one write
lock: a relay that kept its transaction open while it published would hold every writer back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import select, update

from plangate.bus import Bus, Envelope
from plangate.errors import BrokerUnavailable
from plangate.relay import relay_pending
from plangate.store import OutboxRow, Store, audit, open_store
from plangate.store.outbox import PRUNED_AT_ONCE, defer, emit, prune_sent
from plangate.submission import submit_goal
from schemas import GoalSubmitted, utcnow
from tests.servers import free_port
from tests.support import eventually

pytestmark = pytest.mark.redis

WAIT = 10.0


@pytest.fixture
def namespace() -> str:
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
def bus(redis_url: str, namespace: str) -> Iterator[Bus]:
    opened = Bus(redis_url, namespace)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def gone(namespace: str) -> Iterator[Bus]:
    """A bus whose broker does not answer: its publishes retry, then give up."""
    opened = Bus(f"redis://127.0.0.1:{free_port()}/0", namespace)
    try:
        yield opened
    finally:
        opened.close()


def unsent_goal(store: Store) -> int:
    """Store a goal.submitted in the outbox, as a crash before its publish would leave it."""
    with store.session() as session:
        envelope = emit(session, GoalSubmitted(goal_id=uuid4().hex, text="count open tickets"))
    assert envelope.outbox_id is not None
    return envelope.outbox_id


def row(store: Store, row_id: int) -> OutboxRow:
    with store.session() as session:
        return session.execute(select(OutboxRow).where(OutboxRow.id == row_id)).scalar_one()


def relaying(store: Store, bus: Bus) -> tuple[threading.Thread, list[BaseException]]:
    """Run a relay in a thread; what it raised ends up in the list."""
    raised: list[BaseException] = []

    def relay() -> None:
        try:
            relay_pending(store, bus)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    return thread, raised


def test_an_unsent_row_is_published_once_and_marked_sent(store: Store, bus: Bus) -> None:
    row_id = unsent_goal(store)

    assert relay_pending(store, bus) == 1
    assert relay_pending(store, bus) == 0

    assert row(store, row_id).sent_at is not None
    assert bus.queue_depth("planner") == 1


def test_a_relay_whose_broker_is_gone_keeps_no_transaction_open_while_it_tries(
    store: Store, gone: Bus
) -> None:
    row_id = unsent_goal(store)
    thread, raised = relaying(store, gone)
    eventually(lambda: row(store, row_id).relay_until, what="the relay's lease")

    with store.session() as session:  # a writer gets in while the relay is still publishing
        audit.append(session, "test.meanwhile", actor="test")
    assert thread.is_alive(), "the relay gave up before the writer was let in"

    thread.join(WAIT)
    assert [type(exc) for exc in raised] == [BrokerUnavailable]
    left = row(store, row_id)
    assert left.sent_at is None
    assert left.relay_until is None  # handed back: the next sweep tries again


def test_a_row_another_relay_is_publishing_is_left_to_it_until_it_hands_it_back(
    store: Store, bus: Bus, gone: Bus
) -> None:
    row_id = unsent_goal(store)
    thread, _ = relaying(store, gone)
    eventually(lambda: row(store, row_id).relay_until, what="the first relay's lease")

    assert relay_pending(store, bus) == 0

    thread.join(WAIT)
    assert relay_pending(store, bus) == 1
    assert bus.queue_depth("planner") == 1


def test_the_lease_of_a_relay_that_died_runs_out_and_its_rows_are_sent(
    store: Store, bus: Bus
) -> None:
    row_id = unsent_goal(store)
    with store.session() as session:  # as a relay that died mid-publish leaves it
        lease = utcnow() + timedelta(seconds=60)
        session.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(relay_until=lease))
    assert relay_pending(store, bus) == 0

    with store.session() as session:
        ended = utcnow() - timedelta(seconds=1)
        session.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(relay_until=ended))

    assert relay_pending(store, bus) == 1


def deferred_goal(store: Store, delay: float) -> int:
    """Store a goal.submitted as a consumer stores a retry: due `delay` seconds from now."""
    envelope = Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="count open tickets"))
    stored = defer(store, envelope, delay)
    assert stored.outbox_id is not None
    return stored.outbox_id


def set_not_before(store: Store, row_id: int, seconds_from_now: float) -> None:
    with store.session() as session:
        due = utcnow() + timedelta(seconds=seconds_from_now)
        session.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(not_before=due))


def test_a_delayed_retry_is_not_relayed_before_it_is_due_and_is_once_due(
    store: Store, bus: Bus
) -> None:
    """Given a retry stored in the outbox to be published in an hour,
    When the relay runs (even taking every unsent row, older_than 0),
    Then it leaves the row; once the row is due, the relay publishes it, once.
    """
    row_id = deferred_goal(store, delay=3600)
    assert row(store, row_id).not_before is not None

    assert relay_pending(store, bus) == 0

    set_not_before(store, row_id, -1)
    assert relay_pending(store, bus) == 1
    assert relay_pending(store, bus) == 0
    assert bus.queue_depth("planner") == 1


def test_a_due_retry_is_left_to_the_consumer_that_stored_it_for_older_than(
    store: Store, bus: Bus
) -> None:
    """Given a retry that fell due 5 s ago (its consumer publishes it when due),
    When a worker's relay runs with older_than=30 s,
    Then it leaves the row to that consumer; 30 s after it fell due, the relay sends it.
    """
    row_id = deferred_goal(store, delay=0)
    set_not_before(store, row_id, -5)

    assert relay_pending(store, bus, older_than=timedelta(seconds=30)) == 0

    set_not_before(store, row_id, -31)
    assert relay_pending(store, bus, older_than=timedelta(seconds=30)) == 1


def test_a_client_submits_in_one_write_and_marks_what_it_sent_by_the_time_it_closes(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """Given a client on Redis and SQLite,
    When it submits three goals and closes,
    Then each submission wrote the store once (the goal, its audit entry and its outbox row),
    and every row it published is marked sent, so no relay sends a goal a second time.
    """
    from sqlalchemy import event

    from plangate.client import Client
    from plangate.config import Settings

    url = f"sqlite:///{tmp_path / 'plangate.db'}"
    open_store(url).close()  # the schema, as `plangate db upgrade` makes it
    settings = Settings(broker_url=redis_url, database_url=url, namespace=namespace)
    client = Client(settings)
    writes: list[str] = []  # the writes of this thread: the submissions', not the marker's

    def count(_connection: object) -> None:
        if threading.current_thread() is threading.main_thread():
            writes.append("commit")

    event.listen(client._store.engine, "commit", count)
    try:
        for n in range(3):
            client.submit(f"count open tickets, take {n}")
        submitted = len(writes)
    finally:
        client.close()

    assert submitted == 3
    reopened = open_store(url)
    try:
        assert [r.sent_at is not None for r in outbox_rows(reopened)] == [True, True, True]
    finally:
        reopened.close()


def outbox_rows(store: Store) -> list[OutboxRow]:
    with store.reading() as session:
        return list(session.execute(select(OutboxRow).order_by(OutboxRow.id)).scalars())


def test_a_goal_whose_publish_fails_otherwise_is_queued_not_an_error_and_relayed_later(
    store: Store, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored, then the publish failed with an error kombu raised (an observer's malformed
    binding): `serve` answered 500 for a goal it had stored, and a client that retried made a
    second goal. Now it is queued, as when the broker is down, and the relay sends it."""
    real_publish = bus.publish

    def failing(envelopes: object) -> None:
        raise ValueError("not enough values to unpack (expected 3, got 2)")

    monkeypatch.setattr(bus, "publish", failing)
    with caplog.at_level("ERROR"):
        submitted = submit_goal(store, bus, "count open tickets")
    monkeypatch.setattr(bus, "publish", real_publish)

    assert submitted.queued
    assert any("wait in the outbox for the relay" in r.getMessage() for r in caplog.records)
    assert relay_pending(store, bus) == 1
    assert bus.queue_depth("planner") == 1


def test_rows_sent_longer_ago_than_a_day_are_pruned_and_no_other(store: Store) -> None:
    """The outbox kept every row it ever sent: the largest table (50 MB at 11,000 goals), read
    by every relay. Rows sent over a day ago go, in batches; unsent and recent ones stay."""
    old_sent = [unsent_goal(store) for _ in range(PRUNED_AT_ONCE + 5)]  # more than one batch
    recent, unsent = unsent_goal(store), unsent_goal(store)
    with store.session() as session:
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(old_sent))
            .values(sent_at=utcnow() - timedelta(days=2))
        )
        session.execute(update(OutboxRow).where(OutboxRow.id == recent).values(sent_at=utcnow()))

    assert prune_sent(store) == PRUNED_AT_ONCE + 5

    with store.session() as session:
        left = set(session.execute(select(OutboxRow.id)).scalars())
    assert left == {recent, unsent}


def test_a_broker_away_is_said_once_as_it_begins_and_once_as_it_ends_not_at_each_publish(
    store: Store, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve` said the broker was unreachable at every request for as long as it was (20
    lines a minute at one request a second), and never that it was back.

    Given a broker that refuses every publish,
    When ten goals are submitted, then one more once it answers again,
    Then one warning says the broker cannot be reached, and one that it takes messages again.
    """
    real_publish = bus.publish

    def away(envelopes: object) -> None:
        raise BrokerUnavailable("cannot reach the broker at redis://...")

    monkeypatch.setattr(bus, "publish", away)
    with caplog.at_level("WARNING", logger="plangate.relay"):
        for number in range(10):
            assert submit_goal(store, bus, f"count open tickets {number}").queued
        monkeypatch.setattr(bus, "publish", real_publish)
        assert not submit_goal(store, bus, "count open tickets again").queued

    said = [r.getMessage() for r in caplog.records if r.name == "plangate.relay"]
    assert len(said) == 2, said
    assert said[0].startswith("cannot reach the broker at redis://...; 1 message(s) wait")
    assert said[1].startswith("the broker takes messages again, after ")
