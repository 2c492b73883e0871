"""The consume loop's seam: each concern hooks in around every message, in a fixed order.

On the memory transport (the seam does not depend on the broker), with a recording middleware
beside the standard ones, as `plangate.stages.stage_middleware` wires them for every worker.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from uuid import uuid4

import pytest
from sqlalchemy.exc import OperationalError
from typing_extensions import override

from plangate.bus import Bus, Delivery, Envelope
from plangate.bus.middleware import Middleware, MiddlewareStack, Outcome
from plangate.errors import Reject, Unavailable
from plangate.logs import JsonFormatter
from plangate.middleware.outages import DatabaseOutages
from plangate.stages import stage_middleware
from schemas import GoalSubmitted, Message, PlanFailed
from tests.support import eventually

WAIT = 5.0


class Recording(Middleware):
    """Notes each hook as it is called, with the goal it was called for."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, str]] = queue.Queue()

    def _goal(self, delivery: Delivery) -> str:
        return delivery.headers.get("x-plangate-goal-id", "")

    @override
    def after_receive(self, delivery: Delivery) -> None:
        self.calls.put(("after_receive", self._goal(delivery)))

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return self._around(message.goal_id)

    @contextmanager
    def _around(self, goal_id: str) -> Iterator[None]:
        self.calls.put(("handling", goal_id))
        try:
            yield
        except Exception as exc:
            self.calls.put((f"handler raised {type(exc).__name__}", goal_id))
            raise

    @override
    def after_handler(self, delivery: Delivery) -> None:
        self.calls.put(("after_handler", self._goal(delivery)))

    @override
    def before_ack(self, delivery: Delivery) -> None:
        self.calls.put(("before_ack", self._goal(delivery)))

    @override
    def after_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        self.calls.put((f"settled {outcome}", self._goal(delivery)))

    def until(self, last: str) -> list[str]:
        """Return the hooks called up to and including `last` (waiting for each)."""
        seen: list[str] = []
        while not seen or seen[-1] != last:
            seen.append(self.calls.get(timeout=WAIT)[0])
        return seen


@pytest.fixture
def consume() -> Iterator[Callable[..., Bus]]:
    """Start a planner consumer with the given handler and middleware; stopped after."""
    running: list[tuple[threading.Event, threading.Thread, Bus]] = []

    def start(
        handler: Callable[[Message, Delivery], list[Envelope]], *middleware: Middleware
    ) -> Bus:
        bus = Bus("memory://", namespace=f"t{uuid4().hex[:10]}")
        bus.declare()
        consumer = bus.stage_consumer(
            "planner", handler, retry_delays=(0.01,), middleware=list(middleware)
        )
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        thread.start()
        assert consumer.ready.wait(WAIT)
        running.append((stop, thread, bus))
        return bus

    yield start
    for stop, thread, bus in running:
        stop.set()
        thread.join(WAIT)
        bus.close()


def answer(message: Message, _delivery: Delivery) -> list[Envelope]:
    return [Envelope.of(PlanFailed(goal_id=message.goal_id, reasons=["no plan"]))]


def test_a_handled_message_passes_every_hook_in_order(consume: Callable[..., Bus]) -> None:
    """Given a consumer with a recording middleware,
    When a goal is published and handled,
    Then the hooks run in the order of the message's life: received, handled, committed,
    published and acked, settled as handled.
    """
    recording = Recording()
    bus = consume(answer, recording)
    goal = GoalSubmitted(goal_id=uuid4().hex, text="count tickets")

    bus.publish([Envelope.of(goal)])

    assert recording.until("settled handled") == [
        "after_receive",
        "handling",
        "after_handler",
        "before_ack",
        "settled handled",
    ]


def test_a_rejected_message_is_settled_as_dead_lettered(consume: Callable[..., Bus]) -> None:
    """Given a handler that rejects every message,
    When a goal is published,
    Then the middleware sees the handler raise and the message settled as dead-lettered,
    and no hook says it was acked with results.
    """
    recording = Recording()

    def refuse(message: Message, _delivery: Delivery) -> list[Envelope]:
        raise Reject("not a goal we plan")

    bus = consume(refuse, recording)
    bus.publish([Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="no"))])

    seen = recording.until("settled dead_lettered")
    assert "handler raised Reject" in seen
    assert "after_handler" not in seen
    assert "before_ack" not in seen
    letters = eventually(bus.take_dead_letters, WAIT, "a dead letter")
    assert [letter.reason for letter in letters] == ["not a goal we plan"]


def test_a_database_outage_is_waited_out_never_dead_lettered(consume: Callable[..., Bus]) -> None:
    """Given a handler whose database is down for its first two calls, and the outage mapping,
    When a goal is published (max_attempts 3: two plain failures and one more would be fatal),
    Then the recording middleware outside the mapping sees Unavailable twice, the goal is then
    answered, and nothing is dead-lettered.
    """
    recording = Recording()
    calls: list[int] = []

    def database_down_twice(message: Message, delivery: Delivery) -> list[Envelope]:
        calls.append(delivery.attempt)
        if len(calls) <= 2:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database is down"))
        return answer(message, delivery)

    bus = consume(database_down_twice, recording, DatabaseOutages())
    with bus.observe() as observer:
        goal = GoalSubmitted(goal_id=uuid4().hex, text="count tickets")
        bus.publish([Envelope.of(goal)])
        seen = recording.until("settled handled")
        answered = eventually(
            lambda: isinstance(m := observer.next(0.1), PlanFailed) and m, WAIT, "an answer"
        )

    assert seen.count("handler raised Unavailable") == 2
    assert seen.count("settled retried") == 2
    assert calls == [1, 1, 1]  # an outage uses no attempt
    assert answered.goal_id == goal.goal_id
    assert bus.take_dead_letters() == []


def test_every_stage_binds_the_goal_to_its_log_lines_and_maps_outages_innermost() -> None:
    """Given the middleware a worker's stage is wired with,
    Then log fields come first (a line the handler logs names its goal and message) and the
    outage mapping last (the span and the metrics see an outage as `Unavailable`).
    """
    wired = stage_middleware("executor")
    goal = GoalSubmitted(goal_id=uuid4().hex, text="count tickets")
    delivery = Delivery("q", "goal.submitted", {}, attempt=1, redelivered=False)
    record = logging.LogRecord("plangate.test", logging.INFO, __file__, 1, "working", (), None)

    with MiddlewareStack(wired).handling(goal, delivery):
        line = json.loads(JsonFormatter().format(record))

    assert [type(each).__name__ for each in wired] == [
        "LogFields",
        "Tracing",
        "MessageMetrics",
        "FaultInjection",
        "DatabaseOutages",
    ]
    assert line["goal_id"] == goal.goal_id
    assert line["message_id"] == goal.message_id


def test_an_outage_says_the_databases_own_reason_not_its_class() -> None:
    """Given a write refused because the disk is full (SQLite's words, in SQLAlchemy's wrapper),
    When the outage mapping turns it into Unavailable,
    Then the reason is the database's own ("database or disk is full"), without the statement
    or its parameters; it used to say only "OperationalError", hiding the cause.
    """
    refused = OperationalError(
        "INSERT INTO goals VALUES (?)",
        ("a goal's text",),
        sqlite3.OperationalError("database or disk is full"),
    )

    with (
        pytest.raises(Unavailable) as mapped,
        DatabaseOutages().handling(
            GoalSubmitted(goal_id=uuid4().hex, text="x"),
            None,  # type: ignore[arg-type]
        ),
    ):
        raise refused

    assert str(mapped.value) == "the database is unavailable: database or disk is full"
