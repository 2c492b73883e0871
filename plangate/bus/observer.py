"""An observer: a queue of its own bound to the stage messages, read as events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from contextlib import suppress
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Consumer

from plangate.bus.inbound import raw_body
from plangate.bus.topology import Topology
from schemas import Message, MessageRejected, decode_message


class Observer:
    """An exclusive queue that receives a copy of every stage message; used by the CLI and tests."""

    def __init__(
        self, connection: Connection, topology: Topology, types: Collection[str] | None = None
    ) -> None:
        self._connection = connection
        self._received: list[Message] = []
        queue = topology.observer_queue(uuid.uuid4().hex[:12], types)
        channel = connection.channel()
        self._queue = queue.bind(channel)
        self._consumer = Consumer(channel, queues=[queue], on_message=self._on_message)
        self._consumer.consume()

    @property
    def queue_name(self) -> str:
        """The observer's own queue (deleted when it closes)."""
        return str(self._queue.name)

    def close(self) -> None:
        """Stop receiving, and delete the queue and its bindings.

        Auto-delete is the broker's promise on AMQP only: kombu's Redis and memory transports
        keep the queue and its bindings after the consumer leaves, and every later publish
        would add a copy to a list that nobody reads.
        """
        with suppress(Exception):  # leaving anyway; a lost broker keeps nothing we could free
            self._consumer.cancel()
            self._queue.delete()

    def _on_message(self, raw: Any) -> None:
        # Only message types come here (the queue's bindings, from `schemas.routing`): a retry
        # copy is not news, and dead letters are read from their own queue.
        raw.ack()
        try:
            message = decode_message(raw_body(raw), raw.content_type, raw.content_encoding)
        except MessageRejected:
            return  # dead letters and malformed messages are not events
        self._received.append(message)

    def next(self, timeout: float) -> Message | None:
        """Return the next message, waiting up to `timeout` seconds; None if none came.

        A wait can end with nothing received (a message dropped as no event): it goes on
        until the time is up.
        """
        deadline = time.monotonic() + timeout
        while not self._received:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:
                return None
        return self._received.pop(0)
