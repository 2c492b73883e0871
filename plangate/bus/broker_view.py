"""What a worker reads of the broker at each sweep, on one connection it keeps.

A worker's sweep asks how many messages wait in each stage's queue and, on Redis, which goals
a consumer holds. Opened for each read, that was four connections a sweep in every worker (on
Redis a client, a ping and a connection pool each time): 16 ms of CPU every five seconds per
worker, and a steady churn of connections on the broker, which RabbitMQ in particular counts
against it. A view opens its connection at its first read and keeps it; after a failure it
drops it, and the next read opens a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from types import TracebackType
from typing import Any

from kombu.connection import Connection

from plangate.bus import redis_claims, redis_transport
from plangate.bus.topology import Stage, Topology


class BrokerView:
    """Reads of the broker's state on one kept connection (one thread's: kombu's is not shared)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        connect: Callable[[], Connection],
        reachable: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._on_redis = url.split("://", 1)[0] in redis_transport.SCHEMES
        self._topology = topology
        self._connect = connect
        self._reachable = reachable  # raises what a broker out of reach raised as BrokerUnavailable
        self._connection: Connection | None = None
        self._channel: Any = None

    def queue_depth(self, stage: Stage) -> int:
        """Return how many messages wait in a stage's queue."""
        with self._kept_channel() as channel:
            queue = self._topology.stage_queue(stage).bind(channel)
            # Not passive: Redis keeps no empty lists, so a passive declare of an empty queue
            # fails with NOT_FOUND. Declaring an existing queue again changes nothing.
            _, count, _ = queue.queue_declare()
            return int(count)

    def held_goal_ids(self) -> set[str]:
        """Return the goals whose message a consumer holds unacked (Redis; elsewhere none).

        Such a message is being handled, or comes back by itself once its dead holder's claim
        lapses (`plangate.bus.redis_claims`): sending it again would only double the work.
        """
        if not self._on_redis:
            return set()
        with self._kept_channel() as channel:
            return redis_claims.held_goal_ids(channel, self._topology.exchange.name)

    @contextmanager
    def _kept_channel(self) -> Iterator[Any]:
        with self._reachable():
            try:
                if self._channel is None:
                    # Not kombu's `default_channel`, which retries a lost broker forever.
                    self._connection = self._connect()
                    self._channel = self._connection.channel()
                yield self._channel
            except BaseException:
                self.close()  # broken, or left in a state unknown: the next read opens another
                raise

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
