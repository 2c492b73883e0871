"""Waking a consume loop out of kombu's wait: on a real Redis, and where it is not available.

These pin what `plangate.bus.wakeup` relies on inside kombu's Redis transport: a wait in
`drain_events` ends when the pipe is written, messages still arrive beside it, and closing it
leaves kombu as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from plangate.bus.wakeup import Wakeup

WAIT = 5.0


@pytest.fixture
def waiting(redis_url: str) -> Iterator[tuple[Connection, Wakeup, list[Any], Producer]]:
    """A consumer on an empty Redis queue, a wakeup on its connection, what it receives, and a
    producer for that queue."""
    exchange = Exchange(f"t{uuid4().hex[:10]}", type="topic", durable=True)
    queue = Queue(exchange.name, exchange=exchange, routing_key="work", durable=True)
    received: list[Any] = []
    with Connection(redis_url) as connection:
        channel = connection.channel()
        queue.bind(channel).declare()
        wakeup = Wakeup(connection)
        consumer = Consumer(
            channel,
            queues=[queue],
            callbacks=[lambda body, message: (received.append(body), message.ack())],
            accept=["application/json"],
        )
        try:
            with consumer, Connection(redis_url) as other:
                yield connection, wakeup, received, Producer(other.channel(), exchange=exchange)
        finally:
            wakeup.close()
            queue.bind(channel).delete()


@pytest.mark.redis
def test_a_wakeup_from_another_thread_ends_the_wait_at_once(
    waiting: tuple[Connection, Wakeup, list[Any], Producer],
) -> None:
    connection, wakeup, received, _ = waiting
    assert wakeup.available
    threading.Timer(0.05, wakeup.set).start()

    connection.drain_events(timeout=WAIT)  # returns: without the wakeup it would time out

    assert received == []


@pytest.mark.redis
def test_a_wakeup_set_before_the_wait_is_kept_and_then_used_up(
    waiting: tuple[Connection, Wakeup, list[Any], Producer],
) -> None:
    connection, wakeup, _, _ = waiting
    wakeup.set()
    wakeup.set()

    connection.drain_events(timeout=WAIT)

    with pytest.raises(TimeoutError):  # both were used up by the one wait: the loop cannot spin
        connection.drain_events(timeout=0.2)


@pytest.mark.redis
def test_messages_still_arrive_beside_the_wakeup(
    waiting: tuple[Connection, Wakeup, list[Any], Producer],
) -> None:
    connection, _, received, producer = waiting
    producer.publish({"n": 1}, routing_key="work")

    connection.drain_events(timeout=WAIT)

    assert received == [{"n": 1}]


@pytest.mark.redis
def test_closing_it_leaves_kombu_as_it_was_and_setting_it_then_does_nothing(
    waiting: tuple[Connection, Wakeup, list[Any], Producer],
) -> None:
    connection, wakeup, received, producer = waiting
    wakeup.close()
    wakeup.set()

    assert "handle_event" not in vars(connection.transport.cycle)
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)
    producer.publish({"n": 2}, routing_key="work")
    connection.drain_events(timeout=WAIT)
    assert received == [{"n": 2}]


def test_on_the_memory_transport_there_is_none_and_the_loop_keeps_polling() -> None:
    with Connection("memory://") as connection:
        wakeup = Wakeup(connection)
        assert not wakeup.available
        wakeup.set()  # harmless
        wakeup.close()
