"""A delayed retry holds no slot: it is stored in the outbox, its message acked, and it comes back
when due with its attempt counted; a worker killed while it waits loses nothing.

On the memory transport, a real Redis and a real RabbitMQ, with the store's SentMarker as the
consumer's outbox hook, as every worker has it.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from sqlalchemy import select, update

from plangate.bus import Bus, Delivery, Envelope, StageConsumer
from plangate.errors import NotReady, Retry
from plangate.relay import relay_pending
from plangate.store import OutboxRow, Store, open_store
from plangate.store.outbox import SentMarker
from schemas import GoalSubmitted, Message, PlanFailed, utcnow
from tests.support import eventually

WAIT = 5.0  # seconds: an upper bound for what should happen at once
Call = tuple[str, int, float]  # goal text, attempt, when


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def planner(bus: Bus, store: Store) -> Iterator[Callable[..., StageConsumer]]:
    """Start a planner consumer in a thread with the store's SentMarker; stopped after."""
    stops: list[tuple[threading.Event, threading.Thread]] = []
    marker = SentMarker(store, interval=0.05)

    def start(
        handler: Callable[[Message, Delivery], list[Envelope]], **options: int
    ) -> StageConsumer:
        consumer = bus.stage_consumer("planner", handler, on_published=marker, **options)
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        assert consumer.ready.wait(WAIT), "the consumer did not start"
        return consumer

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(WAIT)
    marker.close()


def answer(message: Message) -> list[Envelope]:
    assert isinstance(message, GoalSubmitted)
    return [Envelope.of(PlanFailed(goal_id=message.goal_id, reasons=[message.text]))]


def recording(
    calls: queue.Queue[Call], retry: Callable[[str, int], float | None]
) -> Callable[[Message, Delivery], list[Envelope]]:
    """A handler that records each call and raises Retry when `retry` gives it a delay."""

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        calls.put((message.text, delivery.attempt, time.monotonic()))
        delay = retry(message.text, delivery.attempt)
        if delay is not None:
            raise Retry("another planner holds the goal", delay=delay)
        return answer(message)

    return handler


def outbox_rows(store: Store) -> list[OutboxRow]:
    with store.session() as session:
        return list(session.execute(select(OutboxRow).order_by(OutboxRow.id)).scalars())


def test_a_retry_waiting_30_s_leaves_the_only_slot_to_a_fresh_message(
    bus: Bus, store: Store, planner: Callable[..., StageConsumer]
) -> None:
    """Given a planner with concurrency 1 whose handler asks the first goal to retry in 30 s,
    When that goal and then a fresh one are published,
    Then the fresh one is handled at once; the retry waits in the outbox (attempt 2, due in
    30 s), not in the broker or the consumer: the stage queue is empty.
    """
    calls: queue.Queue[Call] = queue.Queue()
    planner(recording(calls, lambda text, _: 30.0 if text == "waits" else None), concurrency=1)
    waits, fresh = (
        GoalSubmitted(goal_id=uuid4().hex, text="waits"),
        GoalSubmitted(goal_id=uuid4().hex, text="fresh"),
    )
    stored_by = utcnow()

    bus.publish([Envelope.of(waits), Envelope.of(fresh)])

    assert calls.get(timeout=WAIT)[:2] == ("waits", 1)
    assert calls.get(timeout=WAIT)[:2] == ("fresh", 1)
    [retry] = [r for r in outbox_rows(store) if r.routing_key == "retry.planner"]
    assert retry.sent_at is None
    assert retry.headers["x-plangate-attempt"] == "2"
    assert retry.headers["x-plangate-goal-id"] == waits.goal_id
    assert retry.not_before is not None
    assert retry.not_before >= stored_by + timedelta(seconds=29)
    assert GoalSubmitted.model_validate_json(retry.body) == waits
    eventually(lambda: bus.queue_depth("planner") == 0, WAIT, "an empty planner queue")
    assert calls.empty()


def test_the_retry_comes_back_after_its_delay_with_attempt_2_and_is_marked_sent(
    bus: Bus, store: Store, planner: Callable[..., StageConsumer]
) -> None:
    """Given a planner whose handler asks the first attempt of a goal to retry in 0.5 s,
    When the goal is published,
    Then attempt 2 comes no sooner than 0.5 s later, its answer is published, and the outbox
    row of the retry is marked sent (the relay will not send it again).
    """
    calls: queue.Queue[Call] = queue.Queue()
    planner(recording(calls, lambda _, attempt: 0.5 if attempt == 1 else None), concurrency=1)
    goal = GoalSubmitted(goal_id=uuid4().hex, text="waits")

    with bus.observe() as observer:
        bus.publish([Envelope.of(goal)])
        first, second = calls.get(timeout=WAIT), calls.get(timeout=WAIT)
        answered = eventually(
            lambda: isinstance(m := observer.next(timeout=0.1), PlanFailed) and m, WAIT, "answer"
        )

    assert (first[1], second[1]) == (1, 2)
    assert second[2] - first[2] >= 0.5
    assert answered.goal_id == goal.goal_id
    eventually(
        lambda: all(r.sent_at is not None for r in outbox_rows(store)), WAIT, "rows marked sent"
    )
    assert relay_pending(store, bus) == 0


def test_attempts_stored_as_retries_still_count_towards_max_attempts(
    bus: Bus, store: Store, planner: Callable[..., StageConsumer]
) -> None:
    """Given a handler that always asks for a retry in 10 ms, and max_attempts 3,
    When a goal is published,
    Then it is tried with attempts 1, 2, 3 and then dead-lettered as failed 3 times.
    """
    calls: queue.Queue[Call] = queue.Queue()
    planner(recording(calls, lambda *_: 0.01), max_attempts=3)

    bus.publish([Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="never"))])

    assert [calls.get(timeout=WAIT)[1] for _ in range(3)] == [1, 2, 3]
    letters = eventually(bus.take_dead_letters, WAIT, "a dead letter")
    assert [letter.headers["x-plangate-attempt"] for letter in letters] == ["3"]
    assert letters[0].reason.startswith("failed 3 times")


def test_waiting_for_what_is_not_ready_frees_the_slot_and_uses_no_attempt(
    bus: Bus, store: Store, planner: Callable[..., StageConsumer]
) -> None:
    """Given a planner with concurrency 1 and max_attempts 2 whose handler says NotReady (no
    executor has published its tools yet) three times,
    When that goal and then a fresh one are published,
    Then the fresh one is handled at once, the waiting goal comes back stored as a retry each
    time with attempt 1 still, and it is answered on its fourth try, never dead-lettered.
    """
    calls: queue.Queue[Call] = queue.Queue()
    tries: list[int] = []

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        calls.put((message.text, delivery.attempt, time.monotonic()))
        if message.text == "waits" and len(tries) < 3:
            tries.append(delivery.attempt)
            raise NotReady("no executor has published its tools yet", delay=0.05)
        return answer(message)

    planner(handler, concurrency=1, max_attempts=2)
    waits, fresh = (
        GoalSubmitted(goal_id=uuid4().hex, text="waits"),
        GoalSubmitted(goal_id=uuid4().hex, text="fresh"),
    )

    with bus.observe() as observer:
        bus.publish([Envelope.of(waits), Envelope.of(fresh)])
        seen = [calls.get(timeout=WAIT)[:2] for _ in range(5)]

        def failed() -> PlanFailed | None:
            message = observer.next(0.1)
            return message if isinstance(message, PlanFailed) else None

        answers = {eventually(failed, WAIT, "an answer").goal_id for _ in range(2)}

    assert seen[:2] == [("waits", 1), ("fresh", 1)]
    assert seen.count(("waits", 1)) == 4
    assert tries == [1, 1, 1]
    assert answers == {waits.goal_id, fresh.goal_id}
    retries = [r for r in outbox_rows(store) if r.routing_key == "retry.planner"]
    assert len(retries) == 3
    assert {r.headers["x-plangate-attempt"] for r in retries} == {"1"}
    assert bus.take_dead_letters() == []


def test_messages_waiting_for_what_is_not_ready_are_said_once_a_minute_not_at_each_retry(
    bus: Bus,
    planner: Callable[..., StageConsumer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a planner whose handler says NotReady (no executor has published its tools yet)
    for three goals, each retried three times,
    When the tools come and the goals are answered,
    Then the log said the wait once: it said a line at each retry, every 2 s for each goal
    queued behind a missing executor.
    """
    tries: list[str] = []

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        if len(tries) < 9:
            tries.append(message.goal_id)
            raise NotReady("no executor has published its tools yet", delay=0.05)
        return answer(message)

    caplog.set_level(logging.INFO, logger="plangate.bus")
    planner(handler, concurrency=1)
    goals = [GoalSubmitted(goal_id=uuid4().hex, text=f"goal {n}") for n in range(3)]

    with bus.observe() as observer:
        bus.publish([Envelope.of(goal) for goal in goals])

        def failed() -> PlanFailed | None:
            message = observer.next(0.1)
            return message if isinstance(message, PlanFailed) else None

        answered = {eventually(failed, WAIT, "an answer").goal_id for _ in goals}

    assert answered == {goal.goal_id for goal in goals}
    assert len(tries) == 9
    said = [r.getMessage() for r in caplog.records]
    [wait] = [line for line in said if "tools yet" in line]
    assert re.fullmatch(r"retrying \S+ in [\d.]+ s: no executor has published its tools yet", wait)


@pytest.mark.redis
def test_a_worker_killed_while_its_retry_waits_loses_nothing(
    tmp_path: Path, redis_url: str, store: Store
) -> None:
    """Given a planner worker process whose handler asks the first attempt to retry in 30 s,
    When a goal is handled once and the worker is SIGKILLed while the retry waits,
    Then the retry is in the outbox (unsent, attempt 2), not left unacked on the broker; the
    relay leaves it until it is due and then publishes it; and a new worker handles it as
    attempt 2.
    """
    namespace = f"t{uuid4().hex[:10]}"
    log = tmp_path / "attempts.log"
    database_url = f"sqlite:///{tmp_path / 'plangate.db'}"
    command = [sys.executable, "-m", "tests.retrying_worker", redis_url, namespace]
    bus = Bus(redis_url, namespace)
    bus.declare()
    goal = GoalSubmitted(goal_id=uuid4().hex, text="waits")
    worker = subprocess.Popen([*command, database_url, "30", str(log)])
    try:
        bus.publish([Envelope.of(goal)])
        eventually(lambda: [r for r in outbox_rows(store) if r.sent_at is None], 15, "a retry")
        unacked = redis.Redis.from_url(redis_url).hvals
        eventually(
            lambda: not any(goal.goal_id.encode() in v for v in unacked("unacked")),
            WAIT,
            "the message acked",
        )
    finally:
        worker.kill()
        worker.wait(WAIT)
    assert log.read_text().split() == [goal.goal_id, "1"]
    [retry] = outbox_rows(store)
    assert retry.headers["x-plangate-attempt"] == "2"
    assert bus.queue_depth("planner") == 0

    assert relay_pending(store, bus) == 0  # not due for 30 s
    with store.session() as session:  # its 30 s go by
        session.execute(update(OutboxRow).values(not_before=utcnow()))
    assert relay_pending(store, bus) == 1

    again = subprocess.Popen([*command, database_url, "30", str(log)])
    try:
        eventually(lambda: len(log.read_text().split()) == 4, 15, "the retry handled")
    finally:
        again.kill()
        again.wait(WAIT)
        bus.close()
    assert log.read_text().split() == [goal.goal_id, "1", goal.goal_id, "2"]


def test_a_retry_due_in_moments_is_sent_when_its_worker_stops_not_left_to_the_relay(
    bus: Bus, store: Store
) -> None:
    """Given a handler that hands a goal on for 2 s (an executor lacking a plan's tool) and
    another for 60 s, When the worker stops meanwhile, Then the first is published as it
    stops, for another worker to take at once (left to the relay, it waited half a minute),
    and the second stays in the outbox for the relay."""

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        raise NotReady("lacks a tool", delay=2.0 if message.text == "soon" else 60.0)

    marker = SentMarker(store, interval=0.05)
    consumer = bus.stage_consumer("planner", handler, on_published=marker, concurrency=2)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    assert consumer.ready.wait(WAIT)
    soon, later = (GoalSubmitted(goal_id=uuid4().hex, text=t) for t in ("soon", "later"))
    try:
        bus.publish([Envelope.of(soon), Envelope.of(later)])
        eventually(lambda: len(retries_of(store)) == 2, what="both stored as retries")
        stop.set()
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        marker.close()

    unsent = {goal_id for goal_id, sent_at in retries_of(store) if sent_at is None}
    assert unsent == {later.goal_id}


def retries_of(store: Store) -> list[tuple[str, object]]:
    """The planner's stored retries: each one's goal id, and when it was sent (None: not)."""
    return [
        (json.loads(row.body)["goal_id"], row.sent_at)
        for row in outbox_rows(store)
        if row.routing_key == "retry.planner"
    ]
