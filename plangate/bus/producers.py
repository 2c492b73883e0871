"""Publishing from many threads: each thread publishes on a connection of its own.

kombu connections and channels are not thread-safe, so a producer is never shared: the first
publish from a thread opens its connection, and `close` releases all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from kombu.connection import Connection
from kombu.messaging import Producer

from plangate import telemetry
from plangate.bus.envelope import CONTENT_TYPE, Envelope
from plangate.bus.topology import Topology


def publish(producer: Producer, topology: Topology, envelope: Envelope) -> None:
    """Publish one envelope under a producer span; the trace context travels in its headers."""
    headers = dict(envelope.headers)
    with telemetry.producer_span(envelope.routing_key, headers):
        producer.publish(
            envelope.body,
            exchange=topology.exchange,
            routing_key=envelope.routing_key,
            headers=headers,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )


class ThreadProducers:
    """A producer per publishing thread, each on its own connection."""

    def __init__(self, connect: Callable[[], Connection], topology: Topology) -> None:
        self._connect = connect
        self._topology = topology
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    def producer(self) -> Producer:
        """Return this thread's producer; its first use declares every durable queue."""
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = self._connect()
            with self._lock:
                self._connections.append(connection)
            channel = connection.channel()
            for queue in self._topology.durable_queues():
                queue.bind(channel).declare()  # so that no early message is dropped
            producer = Producer(channel, exchange=self._topology.exchange)
            self._local.producer = producer
        return producer

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish envelopes from the calling thread, in order."""
        if envelopes:
            producer = self.producer()
            for envelope in envelopes:
                publish(producer, self._topology, envelope)

    def close(self) -> None:
        """Release every connection opened so far (a thread's next publish opens a new one)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.release()
        self._local = threading.local()
