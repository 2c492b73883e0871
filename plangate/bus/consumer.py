"""A stage's consume loop: one thread owns the connection; handlers run in a bounded pool.

Handlers return the envelopes to publish, or raise Reject (dead letter), Retry (try again after
its delay), HandBack (the worker stops midway: requeued, no attempt used) or anything else (try
again after `retry_delays`); either retry counts towards `max_attempts`, then the message is
dead-lettered. A retry with a delay is stored (the store's outbox, through the `defer` hook)
and its message acked, so a waiting retry holds no slot: the loop publishes it when it is due,
and the relay does if this worker is gone by then. A lost AMQP channel's handlers run on
(`LeftRunning`).

A message is acked only once what it led to is published (`Settlement`, in the loop's
thread): a handled one after its handler committed and, from the handler's own thread on a
connection of its own, published the results and marked their outbox rows sent. Threads
publish through one `ThreadProducers`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any

from kombu.connection import Connection
from kombu.exceptions import OperationalError
from kombu.message import Message as KombuMessage
from kombu.messaging import Consumer

from plangate import metrics
from plangate import middleware as standard_middleware
from plangate.bus.chores import Chores
from plangate.bus.envelope import Delivery, Envelope, sent_at
from plangate.bus.handler_deadline import HandlerDeadline
from plangate.bus.in_flight import Done, InFlight, Running
from plangate.bus.inbound import (
    decode,
    delivery_of,
    mislabelled,
    misrouted,
    raw_body,
    refuse_compressed_messages,
    unreadable_reason,
)
from plangate.bus.left_running import LeftRunning, say_lost_delivery_failed, take_freed_slots
from plangate.bus.middleware import Middleware, MiddlewareStack
from plangate.bus.producers import ThreadProducers
from plangate.bus.reconnect import BROKER_MAX_DELAY, Backoff, run_reconnecting
from plangate.bus.retries import (
    RETRY_DELAYS,
    DeferHook,
    Deferred,
    Deferring,
    Waiting,
    held_in_memory,
    retry_delay,
    uses_an_attempt,
)
from plangate.bus.settlement import PublishedHook, PublishFailed, Settlement, mark_published
from plangate.bus.topology import Stage, Topology
from plangate.bus.wakeup import Wakeup
from plangate.errors import HandBack
from schemas import Message, MessageRejected

log = logging.getLogger(__name__)

Handler = Callable[[Message, Delivery], Sequence[Envelope]]
_POLL_SECONDS = 0.05
_SOON_SECONDS = 5.0  # stored retries this close to due are sent at shutdown
_FIRST_POLL_SECONDS = 0.001
_BUSY_POLL_SECONDS = 0.002


class StageConsumer:
    """Consumes one stage's queue until `stop` is set, then finishes in-flight work.

    `defer` stores a delayed retry durably (the outbox); without one (and without an
    `on_published` hook that is `Deferring`), a retry waits here, unacked, holding its slot.
    `consume_connection` opens the loop's own connection (with AMQP heartbeats, which the loop
    services); publishing connections come from `connection_factory`.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Connection],
        topology: Topology,
        stage: Stage,
        handler: Handler,
        *,
        concurrency: int = 4,
        max_attempts: int = 3,
        on_published: PublishedHook | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        defer: DeferHook | None = None,
        consume_connection: Callable[[], Connection] | None = None,
        handler_deadline: float | None = None,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        if not retry_delays:
            raise ValueError("retry_delays needs at least one delay")
        refuse_compressed_messages()
        self._connect = connection_factory
        self._connect_consumer = consume_connection or connection_factory
        self._topology = topology
        self._stage = stage
        self._queue_name = topology.queue_name(stage)
        self._handler = handler
        if middleware is None:
            middleware = standard_middleware.standard(stage)
        self._middleware = MiddlewareStack(middleware)
        self._concurrency = concurrency
        self._on_published = on_published
        if defer is None and isinstance(on_published, Deferring):
            defer = on_published.defer
        self._defer = defer
        self._retry_delay = partial(retry_delay, max_attempts=max_attempts, delays=retry_delays)
        self._done: queue.Queue[Done] = queue.Queue()
        self._producers = ThreadProducers(self._connect, self._topology)
        self._left = LeftRunning(self._producers.publish)  # a lost AMQP channel's handlers
        self._slots = concurrency  # messages the loop's channel takes at once
        self._stored_retries: Waiting[Envelope] = Waiting()  # in the outbox, acked
        self._in_flight = InFlight()
        self._deadline = HandlerDeadline(handler_deadline, max_attempts)
        self._poll = _FIRST_POLL_SECONDS
        self.ready = threading.Event()
        self._lost_at: float | None = None  # when the broker went, while it is gone
        self.consumed = False  # ever: "consumes again" of a first consume misled
        with connection_factory() as probe:  # not connected: asking the transport is enough
            self._outages = (OperationalError, OSError, PublishFailed, *probe.connection_errors)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; in-flight handlers finish and are settled first."""
        # Retries held unacked start empty on each run: the broker hands those out again.
        self._settlement = Settlement(
            self._producers,
            self._middleware,
            self._topology.retry_key(self._stage),
            self._retry_delay,
            self._stored_retries,
            self._on_published,
        )
        try:
            self._consume(stop)
        finally:
            self._producers.close()

    def _consume(self, stop: threading.Event) -> None:
        with self._connect_consumer() as connection:
            self._wakeup = Wakeup(connection)
            try:
                self._consume_on(connection, stop)
            finally:
                # After the pool: no handler is left to set it (on AMQP one may: a no-op).
                self._wakeup.close()

    def _consume_on(self, connection: Connection, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(self._concurrency, f"plangate-{self._stage}")
        self._lost = threading.Event()  # this channel's, once its handlers are left running
        try:
            self._consume_with(pool, connection, stop)
        except BaseException:
            # On AMQP the broker took back every message this loop held as its channel went
            # (RabbitMQ's consumer_timeout closes it under a long handler): waiting here for the
            # handlers kept the worker blind, and /readyz ok, until the slowest ended. They end
            # on their own; what they end with is not settled (`_receive`), and the message
            # comes again, which the stores' claims make harmless; that copy owns it (`_lost`:
            # a failure here stores no retry). Not when stopping: the worker then closes the
            # store and the bus its handlers still use.
            if connection.transport.driver_type == "amqp" and not stop.is_set():
                self._leave_running(pool)
            else:  # Redis: the loop's claims keep its messages until they lapse
                pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)

    def _leave_running(self, pool: ThreadPoolExecutor) -> None:
        """Leave a lost channel's handlers running, each with the copy that hands it back."""
        self._lost.set()  # first: a handler failing from now on stores no retry
        copy = partial(self._settlement.next_attempt, used=False)  # a hand-back uses no attempt
        running = [(future, copy(r.delivery, r.body)) for future, r in self._in_flight.holding()]
        self._left.leave(pool, running, self._lost)

    def _consume_with(
        self, pool: ThreadPoolExecutor, connection: Connection, stop: threading.Event
    ) -> None:
        channel = connection.channel()
        for q in self._topology.durable_queues():
            q.bind(channel).declare()
        self._pool = pool
        chores = Chores(connection, channel)
        self._consuming()
        self._slots = self._left.wait_for_a_slot(self._concurrency, chores, stop)
        if self._slots:  # else stopped while a lost channel's handlers held every slot
            consumer = Consumer(
                channel,
                queues=[self._topology.stage_queue(self._stage)],
                on_message=self._receive,
                on_decode_error=self._undecodable,
                prefetch_count=self._slots,
                accept=["application/json"],
            )
            with consumer:
                self._take_until_stopped(consumer, connection, chores, stop)
        # Stored retries due in a few seconds (a plan handed on to another executor) are
        # sent now, this consumer cancelled (else it took them back): left to the relay,
        # they waited half a minute. The rest stay in the outbox, for the relay: sent
        # early, each would spend its try sooner.
        try:
            self._settlement.publish_stored(within=_SOON_SECONDS)
        except self._outages as exc:  # the relay sends them once the broker answers
            log.warning("stopping: stored retries left to the relay (%s)", exc)

    def _take_until_stopped(
        self, consumer: Consumer, connection: Connection, chores: Chores, stop: threading.Event
    ) -> None:
        """Take messages up to the free slots until `stop` is set; then settle those in flight."""
        while not stop.is_set():
            self._settle_finished()
            chores.heartbeat()
            chores.keep_claims()
            self._deadline.hand_back_overdue(self._in_flight, self._settlement)
            free = self._left.free(self._concurrency)
            self._slots = take_freed_slots(consumer, self._slots, free)
            if self._in_flight.count >= self._slots:
                # No message can come in until a handler finishes: wait for that.
                self._settle_finished(block=True)
                chores.housekeeping()
            else:
                self._drain(connection)
        while self._in_flight.count:
            self._settle_finished(block=True)
            # Still held while their handlers run: unrenewed, a message went back to
            # the queue the redelivery timeout later, and another worker called the
            # same step again beside this one (RabbitMQ: a missed heartbeat, the same).
            chores.heartbeat()
            chores.keep_claims()
        self._settlement.hand_back_held()

    def run_until_stopped(
        self, stop: threading.Event, max_backoff: float = BROKER_MAX_DELAY
    ) -> None:
        """Run, reconnecting with backoff whenever the broker goes away, until `stop` is set.

        The backoff starts over once the loop consumes again, so each outage begins with the
        first delay.
        """

        def run(stop: threading.Event) -> None:
            self._done = queue.Queue()
            self._in_flight = InFlight()
            try:
                self.run(stop)
            except BaseException:
                metrics.broker_up(self._stage, False)
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                raise

        backoff = Backoff(most=max_backoff)
        run_reconnecting(run, stop, self.ready, self._outages, backoff, f"the {self._stage}")
        self._left.join()  # not stopped while they run: the store is theirs too
        self._producers.close()  # what they handed back went out on these

    def _consuming(self) -> None:
        """Say the stage consumes: ready, its gauge 1, and back after an outage if it was."""
        self.ready.set()
        metrics.broker_up(self._stage, True)
        if self._lost_at is not None:  # the "lost the broker" warnings just stopped
            log.info(
                "the %s consumes%s: the broker answered after %.0f s",
                self._stage,
                " again" if self.consumed else "",
                time.monotonic() - self._lost_at,
            )
            self._lost_at = None
        self.consumed = True

    def _drain(self, connection: Connection) -> None:
        # A finished handler wakes the wait where the transport allows (Redis). Elsewhere the
        # loop looks every 1-2 ms while handlers run (50 ms added a fifth to each hop's latency).
        polling = self._in_flight.count and not self._wakeup.available
        timeout = self._poll if polling else _POLL_SECONDS
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            self._poll = min(self._poll * 2, _BUSY_POLL_SECONDS)

    def _receive(self, raw: KombuMessage) -> None:
        delivery = delivery_of(raw, self._queue_name)
        body = raw_body(raw)
        try:
            message = decode(raw, body)
        except MessageRejected as exc:
            self._settlement.dead_letter(raw, delivery, exc.reason)
            return
        except Exception as exc:  # a fault of the decoder's: no reason to stall the stage either
            log.exception("could not decode a message on %s", delivery.routing_key)
            reason = f"it could not be decoded: {type(exc).__name__}"
            self._settlement.dead_letter(raw, delivery, reason)
            return
        wrong = misrouted(delivery.routing_key, message) or mislabelled(delivery.headers, message)
        if wrong is not None:
            self._settlement.dead_letter(raw, delivery, wrong, message.goal_id)
            return
        self._middleware.after_receive(delivery)
        self._poll = _FIRST_POLL_SECONDS
        future = self._pool.submit(self._call_handler, message, delivery, body, self._lost)
        running = Running(raw, delivery, body, time.monotonic())
        self._in_flight.started(future, running, sent_at(raw.headers) or message.occurred_at)
        # To this run's queue: a handler outliving its run (its channel gone, its message back
        # in the queue) ends unsettled, and no later run acks it on a channel of its own.
        finished = partial(self._finished, self._done)
        future.add_done_callback(lambda f: finished(Done(raw, delivery, f)))

    @property
    def taken_up_to(self) -> datetime | None:
        """When the newest message this loop has taken was made (the stage's progress)."""
        return self._in_flight.taken_up_to

    def _call_handler(
        self, message: Message, delivery: Delivery, body: bytes, lost: threading.Event
    ) -> Sequence[Envelope]:
        try:
            with self._middleware.handling(message, delivery):
                envelopes = self._handler(message, delivery)
        except Exception as exc:
            if lost.is_set():
                if not isinstance(exc, HandBack):
                    say_lost_delivery_failed(exc, delivery)
                # Its copy may have been left to it here (acked as running here already):
                # then the message is sent on again, else it is nowhere.
                self._left.handed_back(delivery)
            else:
                self._store_retry(exc, delivery, body)  # raises Deferred once it is stored
            raise
        self._middleware.after_handler(delivery)
        try:
            self._producers.publish(envelopes)
        except Exception as exc:
            raise PublishFailed(f"could not publish what {delivery.routing_key} led to") from exc
        mark_published(self._on_published, envelopes)  # acked or not: its channel may be lost
        return envelopes

    def _store_retry(self, error: Exception, delivery: Delivery, body: bytes) -> None:
        """In the handler's thread: store a retry to be published after its delay, if it gets one.

        An outage is held here instead (`held_in_memory`); so is a retry that cannot be stored.
        """
        # A message handed back is not retried: the broker gives it to the next worker.
        if self._defer is None or held_in_memory(error) or isinstance(error, HandBack):
            return
        delay = self._retry_delay(error, delivery.attempt)
        if delay is None:
            return
        try:
            next_try = self._settlement.next_attempt(delivery, body, uses_an_attempt(error))
            stored = self._defer(next_try, delay)
        except Exception:
            log.warning(
                "could not store the retry of %s; holding it", delivery.routing_key, exc_info=True
            )
            return
        raise Deferred(stored, delay) from error

    def _finished(self, to: queue.Queue[Done], done: Done) -> None:
        """In the handler's thread: hand its message back to its run's loop, and wake it."""
        to.put(done)
        self._wakeup.set()

    def _settle_finished(self, block: bool = False) -> None:
        self._settlement.republish_due_retries()
        try:
            done = self._done.get(timeout=_POLL_SECONDS) if block else self._done.get_nowait()
        except queue.Empty:
            return
        self._poll = _FIRST_POLL_SECONDS
        self._settle_one(done)
        while not self._done.empty():
            self._settle_one(self._done.get_nowait())

    def _settle_one(self, done: Done) -> None:
        if self._in_flight.ended(done.future):
            self._settlement.settle(done)
            if done.future.exception() is None:  # acked: a copy left to a lost handler?
                self._left.acked(done.delivery)
        else:  # settled when it was handed back
            log.warning("a handler of %s handed back earlier has ended", done.delivery.routing_key)

    def _undecodable(self, raw: Any, error: Exception) -> None:
        """Dead-letter what kombu itself could not read (a compressed body: it may not inflate)."""
        if not isinstance(raw, KombuMessage):
            log.error("dropping a message kombu could not even parse: %r", error)
            return
        delivery = delivery_of(raw, self._queue_name)
        self._settlement.dead_letter(raw, delivery, unreadable_reason(raw, error))
