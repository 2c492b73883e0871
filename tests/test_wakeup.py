"""Waking a consume loop out of kombu's wait: on a real Redis, and where it is not available.

These pin what `plangate.bus.wakeup` relies on inside kombu's Redis transport: a wait in
`drain_events` ends when the pipe is written, messages still arrive beside it, and closing it
leaves kombu as it was.
"""

from __future__ import annotations

import inspect
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import kombu
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from plangate.bus import redis_transport
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


# What else plangate takes from kombu 5.7's Redis transport, pinned here with the version: the
# restore throttle (bus.py) and the reads that redis_transport.py checks (BRPOP and RPOP replies
# through the client's response callbacks, on clients made by `Channel._create_client`).


def test_kombu_is_the_minor_version_these_tests_pin_and_pyproject_allows() -> None:
    """When kombu moves past 5.7, read its Redis transport again (wakeup.py, redis_transport.py,
    the restore throttle in bus.py), make these tests pass, then move the pin in pyproject.toml.
    """
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "kombu>=5.7,<5.8" in pyproject["project"]["dependencies"]
    assert kombu.VERSION[:2] == (5, 7), f"kombu {kombu.__version__} is not the pinned 5.7"


def test_kombu_reads_redis_entries_where_redis_transport_checks_them() -> None:
    read = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert "self.client.parse_response(self.client.connection,\n" in read
    assert "'BRPOP'" in read
    assert "loads(bytes_to_str(item))" in read
    get = inspect.getsource(kombu_redis.Channel._get)
    assert "client.rpop(" in get
    assert "conn_or_acquire()" in get
    assert "self._create_client(" in inspect.getsource(kombu_redis.Channel.conn_or_acquire)
    assert "self._create_client(" in inspect.getsource(kombu_redis.Channel.client.func)
    assert redis_transport.Transport.Channel is redis_transport.Channel


@pytest.mark.redis
def test_the_restore_throttle_lets_one_restore_sweep_in_n_run(redis_url: str) -> None:
    """Given a consuming Redis channel with `unacked_restore_throttle` 3 (bus.py sets 1000),
    When kombu's poller asks for a restore sweep nine times (once per empty poll),
    Then only three sweeps reach Redis.
    """
    options = {"unacked_restore_throttle": 3}
    with Connection(redis_url, transport_options=options) as connection:
        channel = connection.channel()
        queue = Queue(f"t{uuid4().hex[:10]}", durable=True)
        queue.bind(channel).declare()
        sweeps = []
        acquire = channel.conn_or_acquire

        def counted(client: Any = None) -> Any:
            sweeps.append(client)
            return acquire(client)

        with Consumer(channel, queues=[queue], callbacks=[], accept=["application/json"]):
            channel.conn_or_acquire = counted
            for _ in range(9):
                connection.transport.cycle.maybe_restore_messages()
            channel.conn_or_acquire = acquire
        queue.bind(channel).delete()
    assert len(sweeps) == 3
