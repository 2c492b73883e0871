"""Publishing from many threads: each thread publishes on a connection of its own.

kombu connections and channels are not thread-safe, so a producer is never shared: the first
publish from a thread opens its connection, and `close` releases all of them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from plangate import telemetry
from plangate.bus.envelope import CONTENT_TYPE, SENT_AT_HEADER, Envelope
from plangate.bus.topology import Topology

# How a publish rides out a broker blip before it gives up (about 5 s): a stage then reconnects,
# and stops when asked, and a caller that committed an outbox row leaves it to the relay, rather
# than everyone retrying forever inside one publish.
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 3,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 2.0,
}
# The broker's default exchange: a routing key names the queue the message goes to.
DEFAULT_EXCHANGE = Exchange("")


def publish(
    producer: Producer,
    topology: Topology,
    envelope: Envelope,
    retry_policy: dict[str, Any] | None = None,
    *,
    to_queue: bool = False,
) -> None:
    """Publish one envelope under a producer span; the trace context travels in its headers.

    `retry_policy` is kombu's; without one kombu retries a lost connection until the broker is
    back. `to_queue`: straight into the queue its routing key names (the broker's default
    exchange), past every binding: nobody observing the exchange sees it.
    """
    headers = {**envelope.headers, SENT_AT_HEADER: datetime.now(UTC).isoformat()}
    with telemetry.producer_span(envelope.routing_key, headers):
        send = functools.partial(
            producer.publish,
            envelope.body,
            # An Exchange, not "": kombu reads an empty name as "the producer's exchange".
            exchange=DEFAULT_EXCHANGE if to_queue else topology.exchange,
            routing_key=envelope.routing_key,
            headers=headers,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
        )
        connection = producer.connection  # read first: a channel that is lost forgets it
        try:
            # Tried once as it is first: kombu's retrying publish wraps the publish and the
            # exchange's declaration in a new retry closure at every call, which doubled the
            # cost of a publish that needed no retry (26 µs, not 12, on the memory transport).
            send(retry=False)
        except (*connection.recoverable_connection_errors, *connection.recoverable_channel_errors):
            # What kombu's retrying publish would have caught: it reconnects and tries again.
            # Given the connection again: a channel the broker closed forgot it, and kombu's
            # retry read `None.transport_options` (AttributeError), so nothing went out.
            producer.__connection__ = connection
            send(retry=True, retry_policy=retry_policy)


class ThreadProducers:
    """A producer per publishing thread, each on its own connection."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        topology: Topology,
        retry_policy: dict[str, Any] | None = PUBLISH_RETRY_POLICY,
    ) -> None:
        self._connect = connect
        self._topology = topology
        self._retry_policy = retry_policy
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    def producer(self) -> Producer:
        """Return this thread's producer; its first use declares every durable queue."""
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = self._connect()
            try:
                channel = connection.channel()
                for queue in self._topology.durable_queues():
                    queue.bind(channel).declare()  # so that no early message is dropped
            except BaseException:
                connection.release()
                raise
            with self._lock:
                self._connections.append(connection)
            producer = Producer(channel, exchange=self._topology.exchange)
            self._local.producer, self._local.connection = producer, connection
        return producer

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish envelopes from the calling thread, in order."""
        if envelopes:
            producer = self.producer()
            try:
                for envelope in envelopes:
                    publish(producer, self._topology, envelope, self._retry_policy)
            except BaseException:
                # A publish that gave up leaves its producer without a channel: the thread's
                # next publish starts on a new connection.
                self._forget_thread_producer()
                raise

    def _forget_thread_producer(self) -> None:
        connection: Connection | None = getattr(self._local, "connection", None)
        self._local.producer = self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            with suppress(Exception):  # it is broken already; releasing is tidying up
                connection.release()

    def close(self) -> None:
        """Release every connection opened so far (a thread's next publish opens a new one)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.release()
        self._local = threading.local()
