"""The embedded mode's transport waits for a message instead of polling for one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from kombu import Connection, Exchange, Queue

from plangate.bus import memory_transport
from plangate.bus.wakeup import Wakeup

WAIT = 30.0


@pytest.fixture
def connection() -> Iterator[Connection]:
    with Connection("memory://", transport=memory_transport.Transport) as opened:
        yield opened


@pytest.fixture
def received(connection: Connection) -> Iterator[list[Any]]:
    """A consumer of a fresh queue on the connection; the bodies it got."""
    exchange = Exchange("memory-test", type="topic")
    queue = Queue(f"memory-test-{id(connection)}", exchange, routing_key="#")
    bodies: list[Any] = []
    with connection.Consumer(queue, callbacks=[lambda body, message: bodies.append(body)]):
        yield bodies


def publish(connection: Connection, body: str) -> None:
    with connection.clone() as other:
        other.Producer().publish(body, exchange=Exchange("memory-test", type="topic"))


def test_an_idle_wait_looks_once_and_sleeps_until_its_timeout(
    connection: Connection, received: list[Any]
) -> None:
    cycle = connection.transport.cycle
    with mock.patch.object(cycle, "get", wraps=cycle.get) as looked, pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)
    assert looked.call_count == 1  # kombu's memory transport looked every 10 ms
    assert received == []


def test_a_message_ends_a_long_wait_at_once(connection: Connection, received: list[Any]) -> None:
    waiting = threading.Thread(target=lambda: connection.drain_events(timeout=WAIT))
    waiting.start()
    publish(connection, "hello")
    waiting.join(WAIT / 3)
    assert not waiting.is_alive()
    assert received == ["hello"]


def test_a_wakeup_ends_a_wait_with_no_message(connection: Connection, received: list[Any]) -> None:
    wakeup = Wakeup(connection)
    assert wakeup.available
    returned = threading.Event()

    def wait() -> None:
        connection.drain_events(timeout=WAIT)
        returned.set()

    waiting = threading.Thread(target=wait)
    waiting.start()
    wakeup.set()
    assert returned.wait(WAIT / 3)
    waiting.join(WAIT)
    assert received == []


def test_a_wakeup_before_the_wait_is_kept_for_it(
    connection: Connection, received: list[Any]
) -> None:
    """A handler that finishes just before its loop waits still wakes it (no 30 s stall)."""
    Wakeup(connection).set()
    connection.drain_events(timeout=WAIT)  # returns at once: the wake-up was kept
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.05)  # and taken: the next wait is a wait
    assert received == []


def test_a_message_for_another_loops_queue_does_not_wake_this_one(
    connection: Connection, received: list[Any]
) -> None:
    """Each put woke every waiting loop, to look at its empty queues: most of an embedded
    goal's wake-ups were for nothing. Now only the loops that consume the queue wake."""
    other = Exchange("memory-other", type="topic")
    with connection.clone() as elsewhere:
        elsewhere_queue = Queue(f"memory-other-{id(connection)}", other, routing_key="#")
        elsewhere_queue.bind(elsewhere.default_channel).declare()
        cycle = connection.transport.cycle
        outcome: list[BaseException | None] = []

        def wait() -> None:
            try:
                connection.drain_events(timeout=0.5)
                outcome.append(None)
            except TimeoutError as exc:
                outcome.append(exc)

        with mock.patch.object(cycle, "get", wraps=cycle.get) as looked:
            waiting = threading.Thread(target=wait)
            waiting.start()
            in_wait = time.monotonic() + WAIT  # the loop has looked, and waits: then the puts
            while not (looked.call_count and connection.transport in memory_transport._waiting):
                assert time.monotonic() < in_wait, "the loop never started to wait"
                time.sleep(0.001)
            for _ in range(5):
                elsewhere.Producer().publish("not yours", exchange=other)
            waiting.join(WAIT)
        elsewhere_queue.bind(elsewhere.default_channel).delete()

    assert len(outcome) == 1
    assert isinstance(outcome[0], TimeoutError), "the loop woke for another loop's message"
    assert looked.call_count == 1
    assert received == []
