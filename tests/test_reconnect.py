"""A consume loop that loses its broker: the backoff, its reset, and what counts as an outage;
and the AMQP heartbeats that let a consume loop notice a broker gone silent.

The backoff tests script the loop's runs and record the waits between them on a stop event
whose `wait` returns at once: no clock, no sleep.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from kombu.connection import Connection

from plangate.bus import Bus, Delivery, Envelope, StageConsumer
from plangate.bus.reconnect import Backoff, run_reconnecting
from plangate.config import Settings
from schemas import GoalSubmitted, Message
from tests.support import first_consume_failure


class RecordingStop(threading.Event):
    """A stop event whose waits return at once; it is set after `waits` of them."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.delays: list[float | None] = []
        self._waits = waits

    def wait(self, timeout: float | None = None) -> bool:
        self.delays.append(timeout)
        if len(self.delays) >= self._waits:
            self.set()
        return self.is_set()


def no_answer(message: Message, delivery: Delivery) -> list[Envelope]:
    return []


@pytest.fixture
def consumer() -> Iterator[StageConsumer]:
    bus = Bus("memory://", f"t{uuid4().hex[:10]}")
    yield bus.stage_consumer("planner", no_answer)
    bus.close()


def scripted(consumer: StageConsumer, runs: str, error: Exception) -> None:
    """Make each run of the loop fail with `error`: `d` before consuming, `u` after."""
    outcomes = iter(runs)

    def run(stop: threading.Event) -> None:
        if next(outcomes) == "u":
            consumer.ready.set()  # what the loop sets once it consumes
        raise error

    consumer.run = run  # type: ignore[method-assign]


def test_an_outage_doubles_the_delay_up_to_the_most(consumer: StageConsumer) -> None:
    scripted(consumer, "d" * 9, ConnectionError("Connection refused"))
    stop = RecordingStop(waits=9)

    consumer.run_until_stopped(stop, max_backoff=30.0)

    assert stop.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_tries_a_lost_broker_every_10_s_at_most_and_says_it_once(
    consumer: StageConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a broker down for nine reconnects,
    When the loop runs with its default backoff,
    Then it waits 0.5, 1, 2, 4, 8 s, then 10 s at most: at 30 s a worker took up its work 16 s
    after Redis was back; and the log says once, not at every try, that it cannot reach the
    broker (not "lost": it never had it).
    """
    scripted(consumer, "d" * 9, ConnectionError("Connection refused"))
    stop = RecordingStop(waits=9)

    with caplog.at_level(logging.WARNING):
        consumer.run_until_stopped(stop)

    assert stop.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert [record.getMessage() for record in caplog.records] == [
        "the planner cannot reach the broker (Connection refused); trying again in 0.5 s"
    ]


def test_after_a_recovery_the_next_outage_starts_at_the_first_delay(
    consumer: StageConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a broker down for three reconnects, then back (the loop consumes), then down again,
    When the loop runs,
    Then the waits are 0.5, 1, 2, and after the recovery 0.5 again, then 1; once more after
    the next recovery; and each outage is said once, as it begins.
    """
    scripted(consumer, "dddudud", ConnectionError("Connection reset by peer"))
    stop = RecordingStop(waits=7)

    with caplog.at_level(logging.WARNING):
        consumer.run_until_stopped(stop)

    assert stop.delays == [0.5, 1.0, 2.0, 0.5, 1.0, 0.5, 1.0]
    assert not consumer.ready.is_set()  # not ready while it waits to reconnect
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "the planner cannot reach the broker (Connection reset by peer); trying again in 0.5 s",
        *["the planner lost the broker (Connection reset by peer); reconnecting in 0.5 s"] * 2,
    ]


def test_a_fault_that_is_not_a_connection_error_is_not_called_an_outage(
    consumer: StageConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    scripted(consumer, "dd", KeyError("properties"))
    stop = RecordingStop(waits=2)

    with caplog.at_level(logging.WARNING):
        consumer.run_until_stopped(stop)

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "the planner failed (not a broker outage); restarting in 0.5 s",
        "the planner failed (not a broker outage); restarting in 1 s",
    ]
    assert all(record.exc_info for record in caplog.records)


@pytest.mark.rabbitmq
def test_a_consume_loop_on_rabbitmq_keeps_its_heartbeats_and_its_connection(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a planner on RabbitMQ with a 1 s heartbeat (the broker drops a connection that
    misses two),
    When it sits idle for 3.5 s and then a goal arrives,
    Then the heartbeat was agreed on its connection, the connection is still the same one,
    and the goal is handled.
    """
    bus = Bus(rabbitmq_url, f"t{uuid4().hex[:10]}", heartbeat=1)
    bus.declare()
    opened: list[Connection] = []
    connect = bus.connection

    def recorded(**options: Any) -> Connection:
        connection = connect(**options)
        opened.append(connection)
        return connection

    monkeypatch.setattr(bus, "connection", recorded)
    handled: queue.Queue[Message] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        handled.put(message)
        return []

    consumer = bus.stage_consumer("planner", handler)
    stop = threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop)  # not run_until_stopped: a lost connection ends it
        except BaseException as exc:
            crashed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert consumer.ready.wait(5)
        [consuming] = [c for c in opened if c.heartbeat]
        assert consuming.connection.heartbeat == 1  # what py-amqp agreed with the broker
        assert not threading.Event().wait(3.5)  # idle: three heartbeat intervals and more
        goal = GoalSubmitted(goal_id=uuid4().hex, text="still there?")
        bus.publish([Envelope.of(goal)])
        assert handled.get(timeout=5) == goal
    finally:
        stop.set()
        thread.join(5)
        bus.close()
    assert crashed == []


def test_heartbeats_are_on_by_default_and_the_setting_says_the_same(settings: Settings) -> None:
    assert Bus("memory://").heartbeat == settings.amqp_heartbeat_seconds == 60.0


def test_a_redis_database_the_server_lacks_is_said_in_one_line_not_as_a_fault(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a consume loop whose broker URL names Redis database 99 (the server has 16),
    When it runs, Then each attempt logs one line naming the broker's answer and the setting
    to check, with no traceback (it logged "failed (not a broker outage)" and a traceback,
    again and again)."""
    bus = Bus(redis_url.rsplit("/", 1)[0] + "/99", f"t{uuid4().hex[:10]}")

    record = first_consume_failure(bus, caplog)

    assert "the broker refuses its settings (DB index is out of range)" in record.getMessage()
    assert "check PLANGATE_BROKER_URL" in record.getMessage()
    assert record.exc_info is None


def test_a_consume_loop_on_a_port_answering_junk_says_so_once_in_a_line_naming_the_url(
    junk_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a consume loop whose PLANGATE_BROKER_URL names a server answering junk,
    When it tries five times, Then it says once, in one line with no traceback, that the
    broker answers what plangate cannot read, and to set PLANGATE_BROKER_URL: it said "failed
    (not a broker outage)" with a 95-line traceback at every try."""
    consumer = Bus(junk_broker, f"t{uuid4().hex[:10]}").stage_consumer("planner", no_answer)
    stop = RecordingStop(waits=5)

    with caplog.at_level(logging.INFO, logger="plangate.bus"):
        consumer.run_until_stopped(stop)

    said = [r for r in caplog.records if r.name == "plangate.bus.reconnect"]
    assert len(stop.delays) == 5
    assert [r.exc_info for r in said] == [None]
    assert (
        said[0].getMessage().startswith("the planner: the broker answers what plangate cannot read")
    )
    assert "PLANGATE_BROKER_URL" in said[0].getMessage()


def test_a_broker_that_refuses_the_settings_is_said_once_then_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a consume loop whose every attempt the broker refuses (a wrong password, as a
    Redis database it lacks is refused too),
    When it tries ten times in a row, Then the refusal is logged once, as an outage is (it was
    logged at every try: six lines in 16 s, then one each 10 s for good).
    """
    stop = threading.Event()
    tries: list[int] = []

    def refused(_stop: threading.Event) -> None:
        tries.append(1)
        if len(tries) == 10:
            stop.set()
        raise ConnectionError("DB index is out of range")

    with caplog.at_level(logging.ERROR, logger="plangate.bus.reconnect"):
        run_reconnecting(
            refused, stop, threading.Event(), (ConnectionError,), Backoff(0.001, 0.001), "planner"
        )

    said = [r.getMessage() for r in caplog.records if "refuses its settings" in r.getMessage()]
    assert len(tries) == 10
    assert len(said) == 1, said
    assert "check PLANGATE_BROKER_URL" in said[0]


def test_a_sweep_says_a_broker_never_reached_or_refusing_as_it_is_not_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a worker's sweep that has never reached its broker,
    When its reads fail, Then it says it cannot reach the broker (it said "lost"), and when
    the broker answers, that it answers (not "again"); a later failure is a loss; a broker
    that refuses the worker's settings is said to refuse them.
    """
    from plangate.broker_seen import BrokerSeen
    from plangate.errors import BrokerRefused, BrokerUnavailable

    seen, refused = BrokerSeen("planner"), BrokerSeen("gate")
    with caplog.at_level(logging.INFO, logger="plangate.worker"):
        seen.lost(BrokerUnavailable("Connection refused"), 2.0)
        seen.answered(consuming=True)
        seen.lost(BrokerUnavailable("Connection reset"), 2.0)
        refused.lost(BrokerRefused("ACCESS_REFUSED"), 2.0)

    said = [record.getMessage() for record in caplog.records]
    assert said[0].startswith("sweep skipped: the planner cannot reach the broker")
    assert said[1].startswith("the broker answers the planner's reads, after")
    assert said[2].startswith("sweep skipped: the planner lost the broker")
    assert said[3].startswith("sweep skipped: the gate is refused by the broker (ACCESS_REFUSED)")
