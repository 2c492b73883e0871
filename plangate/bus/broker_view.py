"""What a worker reads of the broker at each sweep, on one connection it keeps.

A worker's sweep asks how many messages wait in each stage's queue and, on Redis, which goals
a consumer holds. With a connection opened for each read, every worker's every sweep made
eight connections to Redis and spent 13-16 ms of CPU on them (`bench/sweep_reads.py`), and the
broker saw a steady churn of connections (on RabbitMQ, each a handshake). A view opens its
connection at its first read and keeps it. A read that fails on the kept connection is made
once more on a new one (the kept one may have gone stale between sweeps); one that fails on a
new connection raises, and the next read opens another.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from types import TracebackType
from typing import Any, TypeVar

from kombu.connection import Connection

from plangate.bus import redis_claims, redis_transport
from plangate.bus.topology import Stage, Topology

T = TypeVar("T")


class BrokerView:
    """Reads of the broker's state on one kept connection (one thread's: kombu's is not shared)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        connect: Callable[[], Connection],
        reachable: Callable[[], AbstractContextManager[None]],
        outages: tuple[type[BaseException], ...],
    ) -> None:
        self._on_redis = url.split("://", 1)[0] in redis_transport.SCHEMES
        self._topology = topology
        self._connect = connect
        self._reachable = reachable  # raises what a broker out of reach raised as BrokerUnavailable
        self._outages = outages  # what the transport raises when it cannot reach the broker
        self._connection: Connection | None = None
        self._channel: Any = None

    def queue_depth(self, stage: Stage) -> int:
        """Return how many messages wait in a stage's queue."""

        def depth(channel: Any) -> int:
            queue = self._topology.stage_queue(stage).bind(channel)
            # Not passive: Redis keeps no empty lists, so a passive declare of an empty queue
            # fails with NOT_FOUND. Declaring an existing queue again changes nothing.
            _, count, _ = queue.queue_declare()
            return int(count)

        return self._read(depth)

    def held_goal_ids(self) -> set[str]:
        """Return the goals whose message a consumer holds unacked (Redis; elsewhere none).

        Such a message is being handled, or comes back by itself once its dead holder's claim
        lapses (`plangate.bus.redis_claims`): sending it again would only double the work.
        """
        if not self._on_redis:
            return set()
        exchange = self._topology.exchange.name
        return self._read(lambda channel: redis_claims.held_goal_ids(channel, exchange))

    def _read(self, read: Callable[[Any], T]) -> T:
        """Read on the kept channel; if it fails, once more on a new connection."""
        with self._reachable():
            kept = self._channel is not None
            try:
                return read(self._opened())
            except BaseException as exc:
                self.close()  # broken, or in a state unknown: the next read opens another
                if not kept or not isinstance(exc, self._outages):
                    raise
            # The kept connection went stale between sweeps (a broker restarted, an idle
            # connection cut on the way): that is no outage if a new one answers.
            try:
                return read(self._opened())
            except BaseException:
                self.close()
                raise

    def _opened(self) -> Any:
        if self._channel is None:
            connection = self._connect()
            try:
                # Not kombu's `default_channel`, which retries a lost broker forever.
                channel = connection.channel()
            except BaseException:
                with suppress(Exception):  # it never answered: closing is tidying up
                    connection.release()
                raise
            self._connection, self._channel = connection, channel
        return self._channel

    def close(self) -> None:
        """Close the kept connection (a later read opens another)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with suppress(Exception):  # it may be broken already: closing is tidying up
                connection.release()

    def __enter__(self) -> BrokerView:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
