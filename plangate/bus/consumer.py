"""A stage's consume loop: one thread owns the connection; handlers run in a bounded pool.

Handlers return the envelopes to publish, or raise Reject (dead letter), Retry (try again after
its delay) or anything else (try again after `retry_delays`); either retry counts towards
`max_attempts`, then the message is dead-lettered.

A message is acked only once what it led to is published: a handled one (`_ack`) after its
handler committed and, from the handler's own thread on a connection of its own, published the
results (so they go on without waiting for the loop to notice the handler finished); a dead
letter or a retry (`_publish_then_ack`) after the loop published its copy. Every thread
publishes through the one `ThreadProducers`, each on its own connection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from kombu import message as kombu_message
from kombu.connection import Connection
from kombu.message import Message as KombuMessage
from kombu.messaging import Consumer

from plangate import faults, logs, telemetry
from plangate.bus.dead_letters import dead_letter_envelope
from plangate.bus.envelope import ATTEMPT_HEADER, Delivery, Envelope
from plangate.bus.producers import ThreadProducers
from plangate.bus.topology import Stage, Topology
from plangate.bus.wakeup import Wakeup
from plangate.errors import Reject, Retry, Unavailable
from schemas import Message, MessageRejected, decode_message

log = logging.getLogger(__name__)

Handler = Callable[[Message, Delivery], Sequence[Envelope]]
PublishedHook = Callable[[Sequence[Envelope]], None]

_POLL_SECONDS = 0.05
_FIRST_POLL_SECONDS = 0.001
_BUSY_POLL_SECONDS = 0.002
RETRY_DELAYS = (0.2, 1.0, 5.0, 30.0)


class _PublishFailed(Exception):
    """A handler's messages could not be published: the broker is gone (reconnect)."""


@dataclass
class _Done:
    raw: KombuMessage
    delivery: Delivery
    future: Future[Sequence[Envelope]]


def _text_headers(raw: KombuMessage) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw.headers or {}).items()}


def _refuse_to_decompress(body: Any, content_type: str) -> bytes:
    raise ValueError("compressed messages are not accepted")


def refuse_compressed_messages() -> None:
    """Make kombu leave compressed bodies as they are, in this process.

    kombu inflates a body whose `compression` header says so while it builds the message,
    before any of our checks: a few kilobytes could inflate to gigabytes. plangate accepts no
    compressed message, so a worker process refuses to inflate any.
    """
    kombu_message.decompress = _refuse_to_decompress  # type: ignore[attr-defined]


class StageConsumer:
    """Consumes one stage's queue until `stop` is set, then finishes in-flight work."""

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
    ) -> None:
        if not retry_delays:
            raise ValueError("retry_delays needs at least one delay")
        refuse_compressed_messages()
        self._connect = connection_factory
        self._topology = topology
        self._stage = stage
        self._queue_name = topology.queue_name(stage)
        self._handler = handler
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._on_published = on_published
        self._retry_delays = tuple(retry_delays)
        self._done: queue.Queue[_Done] = queue.Queue()
        self._retries: list[tuple[float, KombuMessage, int]] = []
        self._in_flight = 0
        self._poll = _FIRST_POLL_SECONDS
        self._last_chores = time.monotonic()
        self.ready = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; in-flight handlers finish and are settled first."""
        self._producers = ThreadProducers(self._connect, self._topology)
        try:
            self._consume(stop)
        finally:
            self._producers.close()

    def _consume(self, stop: threading.Event) -> None:
        with self._connect() as connection:
            self._wakeup = Wakeup(connection)
            try:
                self._consume_on(connection, stop)
            finally:
                self._wakeup.close()  # after the pool: no handler is left to set it

    def _consume_on(self, connection: Connection, stop: threading.Event) -> None:
        with ThreadPoolExecutor(self._concurrency, f"plangate-{self._stage}") as pool:
            channel = connection.channel()
            for q in self._topology.durable_queues():
                q.bind(channel).declare()
            self._pool = pool
            consumer = Consumer(
                channel,
                queues=[self._topology.stage_queue(self._stage)],
                on_message=self._receive,
                on_decode_error=self._undecodable,
                prefetch_count=self._concurrency,
                accept=["application/json"],
            )
            with consumer:
                self.ready.set()
                while not stop.is_set():
                    self._settle_finished()
                    if self._in_flight >= self._concurrency:
                        # No message can come in until a handler finishes: wait for that.
                        self._settle_finished(block=True)
                        self._housekeeping(connection)
                    else:
                        self._drain(connection)
                while self._in_flight:
                    self._settle_finished(block=True)
                for _, raw, _ in self._retries:
                    raw.requeue()  # hand back on shutdown: the broker redelivers it

    def run_until_stopped(self, stop: threading.Event, max_backoff: float = 30.0) -> None:
        """Run, reconnecting with backoff whenever the broker goes away, until `stop` is set."""
        backoff = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run(stop)
            except Exception as exc:  # the broker (or its client) failed: reconnect
                if time.monotonic() - started > 60:
                    backoff = 0.5  # it ran well for a while: this is a new outage
                log.warning("lost the broker (%s); reconnecting in %g s", exc, backoff)
                self._done = queue.Queue()
                self._retries = []
                self._in_flight = 0
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)

    def _housekeeping(self, connection: Connection) -> None:
        """Let kombu do its chores once a second, even while every slot is busy.

        Its chores: connection health checks and, when due, its restore sweep of unacked
        messages (throttled: see `unacked_restore_throttle` in bus.py). Long handlers can keep
        every slot busy, and the loop out of kombu's wait, for minutes.
        """
        now = time.monotonic()
        if now - self._last_chores >= 1.0:
            self._last_chores = now
            with suppress(TimeoutError):
                connection.drain_events(timeout=0)

    def _drain(self, connection: Connection) -> None:
        # A finished handler wakes the wait where the transport allows (Redis). Elsewhere the
        # loop looks every 1-2 ms while handlers run (waiting up to 50 ms added a fifth to each
        # hop's latency); an idle worker does not spin.
        polling = self._in_flight and not self._wakeup.available
        timeout = self._poll if polling else _POLL_SECONDS
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            self._poll = min(self._poll * 2, _BUSY_POLL_SECONDS)

    def _delivery(self, raw: KombuMessage) -> Delivery:
        headers = _text_headers(raw)
        attempt = headers.get(ATTEMPT_HEADER, "1")
        return Delivery(
            queue=self._queue_name,
            routing_key=str(raw.delivery_info.get("routing_key", "")),
            headers=headers,
            attempt=int(attempt) if attempt.isdigit() else 1,
            redelivered=bool(raw.delivery_info.get("redelivered", False)),
        )

    def _receive(self, raw: KombuMessage) -> None:
        delivery = self._delivery(raw)
        try:
            if raw.errors:
                raise MessageRejected(f"the broker client could not read it: {raw.errors[0][1]}")
            message = decode_message(
                raw_body(raw), raw.content_type, raw.content_encoding, raw.headers or {}
            )
        except MessageRejected as exc:
            self._dead_letter(raw, delivery, exc.reason)
            return
        faults.trip("after_receive")
        self._in_flight += 1
        self._poll = _FIRST_POLL_SECONDS
        future = self._pool.submit(self._call_handler, message, delivery)
        future.add_done_callback(lambda f: self._finished(_Done(raw, delivery, f)))

    def _call_handler(self, message: Message, delivery: Delivery) -> Sequence[Envelope]:
        with (
            logs.bound(goal_id=message.goal_id, message_id=message.message_id),
            telemetry.consumer_span(delivery.queue, delivery.routing_key, delivery.headers),
        ):
            envelopes = self._handler(message, delivery)
        faults.trip("after_commit")
        try:
            self._producers.publish(envelopes)
        except Exception as exc:
            raise _PublishFailed(f"could not publish what {delivery.routing_key} led to") from exc
        return envelopes

    def _finished(self, done: _Done) -> None:
        """In the handler's thread: hand its message back to the loop, and wake the loop."""
        self._done.put(done)
        self._wakeup.set()

    def _settle_finished(self, block: bool = False) -> None:
        self._republish_due_retries()
        try:
            done = self._done.get(timeout=_POLL_SECONDS) if block else self._done.get_nowait()
        except queue.Empty:
            return
        self._in_flight -= 1
        self._poll = _FIRST_POLL_SECONDS
        self._settle(done)
        while not self._done.empty():
            self._in_flight -= 1
            self._settle(self._done.get_nowait())

    def _settle(self, done: _Done) -> None:
        """Decide what a finished message leads to: its results, a dead letter, or a retry."""
        error = done.future.exception()
        if error is None:
            self._ack(done.raw, done.future.result())
        elif isinstance(error, _PublishFailed):
            raise error  # unacked, the message comes back once the broker does
        elif isinstance(error, Reject):
            log.info("rejected %s: %s", done.delivery.routing_key, error.reason)
            self._dead_letter(done.raw, done.delivery, error.reason)
        elif done.delivery.attempt >= self._max_attempts and not isinstance(error, Unavailable):
            log.error("giving up on %s: %r", done.delivery.routing_key, error, exc_info=error)
            reason = f"failed {done.delivery.attempt} times; last error: {error!r}"
            self._dead_letter(done.raw, done.delivery, reason)
        else:
            self._schedule_retry(done, error)

    def _schedule_retry(self, done: _Done, error: BaseException) -> None:
        if isinstance(error, Unavailable):  # an outage is nobody's fault: no attempt is used
            delay = min(30.0, error.delay * 2 ** min(done.delivery.attempt, 5))
            log.warning("%s; retrying %s in %g s", error, done.delivery.routing_key, delay)
            self._retries.append((time.monotonic() + delay, done.raw, done.delivery.attempt))
            return
        if isinstance(error, Retry):  # an expected outcome: the handler says when to come back
            log.info("retrying %s in %g s: %s", done.delivery.routing_key, error.delay, error)
            delay = error.delay
        else:
            log.warning("will retry %s: %r", done.delivery.routing_key, error)
            delays = self._retry_delays
            delay = delays[min(done.delivery.attempt, len(delays)) - 1]
        self._retries.append((time.monotonic() + delay, done.raw, done.delivery.attempt + 1))

    def _republish_due_retries(self) -> None:
        now = time.monotonic()
        due = [r for r in self._retries if r[0] <= now]
        self._retries = [r for r in self._retries if r[0] > now]
        for _, raw, attempt in due:
            headers = _text_headers(raw) | {ATTEMPT_HEADER: str(attempt)}
            retry_key = self._topology.retry_key(self._stage)
            self._publish_then_ack(raw, [Envelope(retry_key, raw_body(raw), headers)])

    def _dead_letter(self, raw: KombuMessage, delivery: Delivery, reason: str) -> None:
        envelope = dead_letter_envelope(raw_body(raw), raw.content_type, delivery, reason)
        self._publish_then_ack(raw, [envelope])

    def _ack(self, raw: KombuMessage, published: Sequence[Envelope]) -> None:
        """Ack a message whose results are published: the one place a message is acked."""
        if published and self._on_published is not None:
            try:
                self._on_published(published)
            except Exception:
                # Published but not marked sent: the relay sends them again, and handlers are
                # idempotent, so a duplicate is harmless where a lost ack would not be.
                log.exception("could not mark %d outbox rows sent", len(published))
        faults.trip("after_publish")
        raw.ack()

    def _publish_then_ack(self, raw: KombuMessage, envelopes: Sequence[Envelope]) -> None:
        """Publish a dead letter or a retry from the loop's thread, then ack the message."""
        self._producers.publish(envelopes)
        raw.ack()

    def _undecodable(self, raw: Any, error: Exception) -> None:
        """Dead-letter what kombu itself could not read (a compressed body: it may not inflate)."""
        if not isinstance(raw, KombuMessage):
            log.error("dropping a message kombu could not even parse: %r", error)
            return
        delivery = self._delivery(raw)
        reason = f"the broker client could not read it: {error}"
        try:  # the strict decoder's own reason, when it has one (a compressed body has)
            decode_message(raw_body(raw), raw.content_type, raw.content_encoding, raw.headers or {})
        except MessageRejected as exc:
            reason = exc.reason
        self._dead_letter(raw, delivery, reason)


def raw_body(raw: KombuMessage) -> bytes:
    """Return a kombu message's body as bytes, whatever the transport handed over.

    py-amqp hands over text when the body decodes in its declared content encoding (and bytes
    when it does not); encoding it back the same way gives the bytes that were sent.
    """
    body: Any = raw.body
    if isinstance(body, bytes):
        return body
    try:
        return str(body).encode(raw.content_encoding or "utf-8")
    except (LookupError, UnicodeError):
        return str(body).encode("utf-8", "surrogateescape")
