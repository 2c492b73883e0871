"""Handlers a lost AMQP channel left running, and the slots of the worker's concurrency they hold.

RabbitMQ closes a consume loop's channel under a handler that outlasts its `consumer_timeout`
and gives every message the channel held out again. The loop consumes again at once on a new
channel; the lost channel's handlers run on (Python cannot stop a thread) and keep their slots
until they end: the new channel takes only the slots left free, and more as they end. Else the
worker ran its concurrency afresh beside them (8 handlers at `--concurrency 4`).

Their deliveries are lost: the copy the broker gave out again owns the message, so a lost
handler's failure stores no retry (the copy's would be a second one, an attempt counted twice).
But a copy this worker takes while the handler runs may be left to it (an executor acks one
as "running here already"): should the handler then end short (it hands its message back as
its executor stops, or it fails), the message is published again, else it was nowhere and its
goal waited for the reconciler. Whichever comes second, the handler's end or the copy's ack,
publishes it; a copy taken elsewhere, or still queued, is handled afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from kombu.messaging import Consumer

from plangate.bus.chores import Chores
from plangate.bus.envelope import MESSAGE_ID_HEADER, Delivery, Envelope
from plangate.bus.settlement import error_text

log = logging.getLogger(__name__)
_WAIT_SECONDS = 0.05  # between a connection's chores, while waiting for a slot


@dataclass
class _Lost:
    """A lost delivery whose handler runs: its hand-back, and what became of it and its copy."""

    hand_back: Envelope
    copy_acked: bool = False
    handed_back: bool = False


class LeftRunning:
    """The handlers of a consume loop's lost channels that still run, counted as they end.

    `publish` sends a hand-back (from the thread that calls it: each has its own connection).
    """

    def __init__(self, publish: Callable[[Sequence[Envelope]], None]) -> None:
        self._publish = publish
        self._changed = threading.Condition()
        self._pools: list[ThreadPoolExecutor] = []
        self._count = 0
        self._lost: dict[str, _Lost] = {}  # by message id

    def leave(
        self,
        pool: ThreadPoolExecutor,
        running: Iterable[tuple[Future[Any], Envelope]],
        lost: threading.Event,
    ) -> None:
        """Leave a lost channel's pool to end on its own; its running handlers hold slots.

        Each comes with the copy that hands its message back, should it. `lost` tells its
        handlers their deliveries are lost (set first: one ending now knows).
        """
        lost.set()
        pool.shutdown(wait=False, cancel_futures=True)  # those not started yet, never will
        with self._changed:
            self._pools = [*filter(_running, self._pools), pool]
            running = [(future, copy) for future, copy in running if not future.done()]
            self._count += len(running)
            for _, copy in running:
                if message_id := _message_id(copy.headers):  # plangate's messages all have one
                    self._lost[message_id] = _Lost(copy)
        for future, copy in running:
            future.add_done_callback(partial(self._ended, _message_id(copy.headers)))

    def free(self, concurrency: int) -> int:
        """Return how many of `concurrency` slots these handlers leave free."""
        with self._changed:
            return max(0, concurrency - self._count)

    def wait_for_a_slot(self, concurrency: int, chores: Chores, stop: threading.Event) -> int:
        """Return the slots free for a new channel; wait while these handlers hold all.

        At least one, unless stopped meanwhile (then 0: the loop takes nothing). `chores`
        keep the new channel's connection alive meanwhile.
        """
        while not (free := self.free(concurrency)) and not stop.is_set():
            chores.heartbeat()
            chores.housekeeping()
            with self._changed:
                self._changed.wait(_WAIT_SECONDS)
        return free

    def join(self) -> None:
        """Wait for every one of them to end (the store and bus they use are about to close)."""
        with self._changed:
            pools = list(self._pools)
        for pool in pools:
            pool.shutdown(wait=True)

    def handed_back(self, delivery: Delivery) -> None:
        """In a lost handler's thread: note it ends short (it hands back, or it failed).

        Its message is sent on again now if its copy was acked here, else once it is: that copy
        was left to it, and is nowhere else.
        """
        with self._changed:
            lost = self._lost.get(_message_id(delivery.headers))
            if lost is None:
                return
            lost.handed_back = True
            if not lost.copy_acked:
                return  # kept: its copy may yet be acked here
            del self._lost[_message_id(delivery.headers)]
        self._hand_back(lost)

    def acked(self, delivery: Delivery) -> None:
        """In the loop's thread: note a message was handled and acked.

        If it is the copy of a lost delivery whose handler handed it back, that hand-back is
        published now.
        """
        with self._changed:
            lost = self._lost.get(_message_id(delivery.headers))
            if lost is None:
                return
            lost.copy_acked = True
            if not lost.handed_back:
                return
            del self._lost[_message_id(delivery.headers)]
        self._hand_back(lost)

    def _hand_back(self, lost: _Lost) -> None:
        copy = lost.hand_back
        try:
            self._publish([copy])
        except Exception as exc:
            log.error(
                "could not hand %s back (%s): the reconciler sends it again",
                copy.routing_key,
                exc,
            )
            return
        log.info(
            "handed %s back: its copy was left to a handler whose channel was lost, which "
            "stopped short",
            copy.routing_key,
        )

    def _ended(self, message_id: str, _future: Future[Any]) -> None:
        with self._changed:
            self._count -= 1
            lost = self._lost.get(message_id)
            # One that ended short is kept for its copy's ack: the loop may settle that copy
            # only after this handler ended, though it was left to it while it ran. (A copy
            # handled afresh after the end is then sent on once more: harmless, as any
            # redelivery.)
            if lost is not None and not lost.handed_back:
                del self._lost[message_id]
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
        "again as the channel went, and that copy is handled (or sent on again, if it was "
        "left to this handler)",
        delivery.routing_key,
        error_text(error),
    )


def _message_id(headers: dict[str, str]) -> str:
    return headers.get(MESSAGE_ID_HEADER, "")


def _running(pool: ThreadPoolExecutor) -> bool:
    return any(thread.is_alive() for thread in getattr(pool, "_threads", ()))
