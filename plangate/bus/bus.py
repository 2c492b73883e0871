"""The bus: kombu behind a small interface. Only `plangate.bus` imports kombu.

A `Bus` is a factory: each thread that publishes gets its own connection (kombu connections and
channels are not thread-safe), and each consumer loop opens its own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Consumer, Producer

from plangate.bus.consumer import (
    RETRY_DELAYS,
    Handler,
    PublishedHook,
    StageConsumer,
    publish,
    raw_body,
)
from plangate.bus.dead_letters import decode_dead_letter
from plangate.bus.envelope import Envelope
from plangate.bus.topology import Stage, Topology
from schemas import DeadLetter, Message, MessageRejected, decode_message

# The memory transport polls; 10 ms keeps the embedded pipeline snappy without burning a core.
_TRANSPORT_OPTIONS: dict[str, dict[str, Any]] = {"memory": {"polling_interval": 0.01}}


class Bus:
    """Publish envelopes and run stage consumers on one broker URL and namespace."""

    def __init__(self, url: str, namespace: str = "plangate") -> None:
        self.url = url
        self.topology = Topology(namespace)
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> Connection:
        """Open a new kombu connection to the broker (the caller owns and closes it)."""
        scheme = self.url.split("://", 1)[0]
        options = _TRANSPORT_OPTIONS.get(scheme, {})
        return Connection(self.url, transport_options=options, connect_timeout=5)

    def _producer(self) -> Producer:
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = self.connection()
            with self._lock:
                self._all.append(connection)
            channel = connection.channel()
            for queue in self.topology.durable_queues():
                queue.bind(channel).declare()
            producer = Producer(channel, exchange=self.topology.exchange)
            self._local.producer = producer
        return producer

    def declare(self) -> None:
        """Declare the exchange and every durable queue, so no early message is dropped."""
        self._producer()

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish envelopes from the calling thread (on its own connection)."""
        producer = self._producer()
        for envelope in envelopes:
            publish(producer, self.topology, envelope)

    def stage_consumer(
        self,
        stage: Stage,
        handler: Handler,
        *,
        concurrency: int = 4,
        max_attempts: int = 3,
        on_published: PublishedHook | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> StageConsumer:
        """Return the consume loop of one stage; call `.run(stop)` in the thread that owns it."""
        return StageConsumer(
            self.connection,
            self.topology,
            stage,
            handler,
            concurrency=concurrency,
            max_attempts=max_attempts,
            on_published=on_published,
            retry_delays=retry_delays,
        )

    @contextmanager
    def observe(self) -> Iterator[Observer]:
        """Receive a copy of every stage message published while the observer is open."""
        with self.connection() as connection:
            observer = Observer(connection, self.topology)
            yield observer

    def queue_depth(self, stage: Stage) -> int:
        """Return how many messages wait in a stage's queue."""
        with self.connection() as connection:
            queue = self.topology.stage_queue(stage).bind(connection.channel())
            # Not passive: Redis keeps no empty lists, so a passive declare of an empty queue
            # fails with NOT_FOUND. Declaring an existing queue again changes nothing.
            _, count, _ = queue.queue_declare()
            return int(count)

    def take_dead_letters(self) -> list[DeadLetter]:
        """Remove and return every dead letter waiting in the dead-letter queue."""
        letters = []
        with self.connection() as connection:
            queue = self.topology.dead_letter_queue().bind(connection.channel())
            queue.declare()
            while (raw := queue.get(no_ack=False, accept=["application/json"])) is not None:
                letters.append(decode_dead_letter(raw_body(raw)))
                raw.ack()
        return letters

    def close(self) -> None:
        """Close every publishing connection this bus opened."""
        with self._lock:
            for connection in self._all:
                connection.release()
            self._all.clear()
        self._local = threading.local()


class Observer:
    """An exclusive queue that receives a copy of every message; used by the CLI and tests."""

    def __init__(self, connection: Connection, topology: Topology) -> None:
        self._connection = connection
        self._received: list[Message] = []
        queue = topology.observer_queue(uuid.uuid4().hex[:12])
        channel = connection.channel()
        self._consumer = Consumer(channel, queues=[queue], on_message=self._on_message)
        self._consumer.consume()

    def _on_message(self, raw: Any) -> None:
        raw.ack()
        if str(raw.delivery_info.get("routing_key", "")).startswith(("retry.", "dead.")):
            return  # a retry is not news, and dead letters are read from their own queue
        try:
            message = decode_message(raw_body(raw), raw.content_type, raw.content_encoding)
        except MessageRejected:
            return  # dead letters and malformed messages are not events
        self._received.append(message)

    def next(self, timeout: float) -> Message | None:
        """Return the next message, waiting up to `timeout` seconds; None if none came."""
        if not self._received:
            try:
                self._connection.drain_events(timeout=timeout)
            except TimeoutError:
                return None
        return self._received.pop(0) if self._received else None
