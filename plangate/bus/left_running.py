"""Handlers a lost AMQP channel left running, and the slots of the worker's concurrency they hold.

RabbitMQ closes a consume loop's channel under a handler that outlasts its `consumer_timeout`
and gives every message the channel held out again. The loop consumes again at once on a new
channel; the lost channel's handlers run on (Python cannot stop a thread) and keep their slots
until they end: the new channel takes only the slots left free, and more as they end. Else the
worker ran its concurrency afresh beside them (8 handlers at `--concurrency 4`).

Their deliveries are lost: the copy the broker gave out again owns the message, so a lost
handler's failure stores no retry (the copy's would be a second one, an attempt counted twice).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kombu.messaging import Consumer

from plangate.bus.envelope import Delivery
from plangate.bus.settlement import error_text

log = logging.getLogger(__name__)


class LeftRunning:
    """The handlers of a consume loop's lost channels that still run, counted as they end."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pools: list[ThreadPoolExecutor] = []
        self._count = 0

    def leave(
        self, pool: ThreadPoolExecutor, futures: Iterable[Future[Any]], lost: threading.Event
    ) -> None:
        """Leave a lost channel's pool to end on its own; its running `futures` hold slots.

        `lost` tells its handlers their deliveries are lost (set first: one ending now knows).
        """
        lost.set()
        pool.shutdown(wait=False, cancel_futures=True)  # those not started yet, never will
        with self._changed:
            self._pools = [*filter(_running, self._pools), pool]
            running = [future for future in futures if not future.done()]
            self._count += len(running)
        for future in running:
            future.add_done_callback(self._ended)

    def free(self, concurrency: int) -> int:
        """Return how many of `concurrency` slots these handlers leave free."""
        with self._changed:
            return max(0, concurrency - self._count)

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` s for one of these handlers to end."""
        with self._changed:
            self._changed.wait(timeout)

    def join(self) -> None:
        """Wait for every one of them to end (the store and bus they use are about to close)."""
        with self._changed:
            pools = list(self._pools)
        for pool in pools:
            pool.shutdown(wait=True)

    def _ended(self, _future: Future[Any]) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()


def take_freed_slots(consumer: Consumer, slots: int, free: int) -> int:
    """Let `consumer` take `free` messages at once if it takes only `slots`; return its slots.

    RabbitMQ fixes a consumer's prefetch as it subscribes (a later `basic.qos` applies to the
    next consumer only): it subscribes again. The messages it holds stay held, to be acked.
    """
    if free <= slots:
        return slots
    consumer.cancel()
    consumer.qos(prefetch_count=free)
    consumer.consume()
    return free


def say_lost_delivery_failed(error: Exception, delivery: Delivery) -> None:
    """In a handler's thread: say it failed with its channel lost, and so stores no retry."""
    log.warning(
        "a handler of %s whose channel was lost failed (%s); no retry: the message came "
        "again as the channel went, and that copy is retried if it fails",
        delivery.routing_key,
        error_text(error),
    )


def _running(pool: ThreadPoolExecutor) -> bool:
    return any(thread.is_alive() for thread in getattr(pool, "_threads", ()))
