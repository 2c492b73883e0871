"""What a finished message leads to, and the one place a stage's loop acks a message.

A handled message is acked once its results are published (its handler published them from
its own thread, and marked them sent there: `mark_published`); a dead letter or a retry held
here is acked once the loop has published its copy; a stored retry once it is in the outbox.
One its handler handed back (`HandBack`: the worker stops midway) is requeued, never acked.
All of it runs in the loop's thread, but `next_attempt` and `mark_published`, which handlers'
threads use too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kombu.message import Message as KombuMessage
from opentelemetry.trace import StatusCode

from plangate import logs, telemetry
from plangate.bus.dead_letters import dead_letter_envelope
from plangate.bus.envelope import (
    ATTEMPT_HEADER,
    GOAL_HEADER,
    MESSAGE_ID_HEADER,
    Delivery,
    Envelope,
)
from plangate.bus.in_flight import Done
from plangate.bus.inbound import decode, original_content_type, raw_body, text_headers
from plangate.bus.middleware import MiddlewareStack
from plangate.bus.producers import ThreadProducers
from plangate.bus.retries import Deferred, Waiting
from plangate.errors import HandBack, NotReady, PlangateError, Reject, Retry, Unavailable
from plangate.goal_trace import goal_span
from plangate.lasting import Lasting

log = logging.getLogger(__name__)

SAY_AGAIN_EVERY = 60.0  # seconds: an outage's retries are said again at most this often
MAX_WAITS_TRACKED = 256  # distinct reasons of waits remembered to say each once a minute
PublishedHook = Callable[[Sequence[Envelope]], None]
RetryDelay = Callable[[BaseException, int], float | None]  # None: dead-letter it


class PublishFailed(Exception):
    """A handler's messages could not be published: the broker is gone (reconnect)."""


class Settlement:
    """Settles one stage's finished messages: acks, dead letters and retries.

    `retry_key` is the stage's retry routing key; `stored_retries` are retries kept in the
    outbox and already acked, published here when due (the relay does, if this worker is gone
    by then). Retries held unacked (an outage's) live here and go back to the broker on
    `hand_back_held`.
    """

    def __init__(
        self,
        producers: ThreadProducers,
        middleware: MiddlewareStack,
        retry_key: str,
        retry_delay: RetryDelay,
        stored_retries: Waiting[Envelope],
        on_published: PublishedHook | None,
    ) -> None:
        self._producers = producers
        self._middleware = middleware
        self._retry_key = retry_key
        self._retry_delay = retry_delay
        self._stored_retries = stored_retries
        self._on_published = on_published
        self._held: Waiting[tuple[KombuMessage, int]] = Waiting()
        # An outage's retries, said as it begins and now and then, not one line a retry.
        self._outage = Lasting(SAY_AGAIN_EVERY)
        # So is a wait for what is not there yet (no executor's tools), by what it says: it is
        # every message's, and a line each retry was a line every 2 s for each goal queued.
        self._waits: dict[str, Lasting] = {}

    def settle(self, done: Done) -> None:
        """Decide what a finished message leads to: its results, a dead letter or a retry."""
        error = done.future.exception()
        if not isinstance(error, Unavailable) or isinstance(error, NotReady):
            self._outage_over()  # this message got past the outage, whatever came of it
        if error is None:
            self._ack(done.raw, done.delivery)
            self._middleware.after_settle(done.delivery, "handled")
        elif isinstance(error, PublishFailed):
            raise error  # unacked, the message comes back once the broker does
        elif isinstance(error, Deferred):
            self._ack_stored_retry(done, error)
        elif isinstance(error, Reject):
            self.dead_letter(done.raw, done.delivery, error.reason)
        elif isinstance(error, HandBack):
            self._hand_back(done, error)
        elif (delay := self._retry_delay(error, done.delivery.attempt)) is None:
            said = error_text(error)
            what = f"{done.delivery.message_type} from {done.delivery.queue}"
            # A traceback only for what plangate did not expect: its own errors say it all.
            fault = None if isinstance(error, PlangateError) else error
            with logs.bound(**_named_in(done.delivery.headers)):
                log.error("giving up on %s: %s", what, said, exc_info=fault)
            reason = f"failed {done.delivery.attempt} times; last error: {said}"
            self.dead_letter(done.raw, done.delivery, reason)
        else:
            self._hold_retry(done, error, delay)

    def next_attempt(self, delivery: Delivery, body: bytes, used: bool = True) -> Envelope:
        """Return a copy of a message as its next try, for the stage's retry key."""
        headers = delivery.headers | {ATTEMPT_HEADER: str(delivery.attempt + used)}
        return Envelope(self._retry_key, body, headers)

    def republish_due_retries(self) -> None:
        """Publish the retries whose time has come, held here or stored in the outbox."""
        for raw, attempt in self._held.due():
            headers = text_headers(raw) | {ATTEMPT_HEADER: str(attempt)}
            self.publish_then_ack(raw, [Envelope(self._retry_key, raw_body(raw), headers)])
        self.publish_stored()

    def publish_stored(self, within: float = 0.0) -> None:
        """Publish the stored retries due now, or `within` seconds (the outbox has them)."""
        stored = self._stored_retries.due(within)
        if stored:
            self._producers.publish(stored)  # if this fails, the relay sends them later
            mark_published(self._on_published, stored)

    def hand_back_held(self) -> None:
        """Requeue the retries held here (on shutdown): the broker redelivers them."""
        for raw, _ in self._held:
            raw.requeue()

    def dead_letter(
        self, raw: KombuMessage, delivery: Delivery, reason: str, goal_id: str | None = None
    ) -> None:
        """Publish the message to the dead-letter queue with its reason, then ack it.

        In the goal's trace as an error, and logged with the goal, message and trace its
        headers name: a message that did not parse has no handler's span or log fields, and
        its dead letter was a bare `publish` span, its log line naming no goal. `goal_id` is
        the body's, for a message that was read: logged as the goal in place of the header's,
        and named in the letter's headers. Not given, it is read from the body if it can be.
        """
        body, content_type = raw_body(raw), original_content_type(raw)
        if goal_id is None:
            goal_id = _goal_read_from(raw, body)
        name = f"dead-letter {delivery.message_type}"
        with goal_span(name, delivery.headers, _named_in(delivery.headers, goal_id)) as span:
            span.set_status(StatusCode.ERROR, reason[:500])
            span.set_attribute("plangate.dead_letter.reason", reason[:2000])
            span.set_attribute("messaging.destination.name", delivery.queue)
            envelope = dead_letter_envelope(body, content_type, delivery, reason, goal_id)
            # The id `plangate dlq list` shows and `dlq show` takes: from the line to the letter.
            letter_id = envelope.headers[MESSAGE_ID_HEADER]
            log.warning(
                "dead-lettered %s from %s as %s: %s",
                delivery.message_type,
                delivery.queue,
                letter_id,
                reason,
                extra={"dead_letter_id": letter_id},
            )
            self._middleware.after_settle(delivery, "dead_lettered")
            self.publish_then_ack(raw, [envelope])

    def publish_then_ack(self, raw: KombuMessage, envelopes: Sequence[Envelope]) -> None:
        """Publish a dead letter or a retry from the loop's thread, then ack the message."""
        self._producers.publish(envelopes)
        raw.ack()

    def _ack(self, raw: KombuMessage, delivery: Delivery) -> None:
        """Ack a message whose results are stored and published: the one place for that."""
        self._middleware.before_ack(delivery)
        raw.ack()

    def _ack_stored_retry(self, done: Done, stored: Deferred) -> None:
        why = stored.__cause__
        if not isinstance(why, NotReady) or self._wait_due(str(why)):
            log.info("retrying %s in %g s: %s", done.delivery.routing_key, stored.delay, why)
        self._middleware.after_settle(done.delivery, "retried")
        self._ack(done.raw, done.delivery)
        self._stored_retries.add(stored.delay, stored.envelope)

    def _hand_back(self, done: Done, stopping: HandBack) -> None:
        """Give a message its handler left midway (its worker stops) back to the broker.

        Requeued as it came, its attempt unchanged: stopping is no failure of the message's.
        """
        log.info("handing %s back to the broker: %s", done.delivery.routing_key, stopping)
        self._middleware.after_settle(done.delivery, "handed_back")
        done.raw.requeue()

    def _hold_retry(self, done: Done, error: BaseException, delay: float) -> None:
        attempt = done.delivery.attempt
        if isinstance(error, Unavailable):  # an outage uses no attempt
            said = self._outage.note()
            key = done.delivery.routing_key
            if said == "began":
                log.warning("%s; retrying %s in %g s (and so on while it lasts)", error, key, delay)
            elif said == "goes on":
                lasted = self._outage.seconds()
                log.warning("%s, for %.0f s now; retrying %s in %g s", error, lasted, key, delay)
        else:  # a Retry is an expected outcome; anything else is worth a warning
            level = logging.INFO if isinstance(error, Retry) else logging.WARNING
            log.log(level, "retrying %s in %g s: %r", done.delivery.routing_key, delay, error)
            attempt += 1
        self._held.add(delay, (done.raw, attempt))
        self._middleware.after_settle(done.delivery, "retried")

    def _wait_due(self, said: str) -> bool:
        """Return True if a wait saying `said` is to be logged: first, then once a minute."""
        if len(self._waits) >= MAX_WAITS_TRACKED and said not in self._waits:
            self._waits.clear()  # bounded: a reason naming each goal must not grow it for ever
        return self._waits.setdefault(said, Lasting(SAY_AGAIN_EVERY)).note() is not None

    def _outage_over(self) -> None:
        """Say, once, that messages are handled again after an outage, and how long it lasted."""
        if self._outage.active:
            lasted = self._outage.end()
            log.warning("messages no longer wait out an outage, after %.0f s of retries", lasted)


def mark_published(hook: PublishedHook | None, published: Sequence[Envelope]) -> None:
    """Tell the outbox, through `hook`, these were published (its relay then leaves them).

    From the thread that published them, as soon as it did: a handler's results were marked
    only as the loop acked its message, and one whose channel was lost meanwhile (RabbitMQ's
    consumer_timeout) is never acked, so the relay sent its outcome a second time.
    """
    if published and hook is not None:
        try:
            hook(published)
        except Exception:
            # Unmarked, they are sent again by the relay: harmless (handlers are idempotent).
            log.exception("could not mark %d outbox rows sent", len(published))


def error_text(error: BaseException) -> str:
    """Return an error as a person reads it: plangate's own by its words, others with a class."""
    if isinstance(error, PlangateError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _goal_read_from(raw: KombuMessage, body: bytes) -> str | None:
    """Return the goal of a message whose body decodes, else None (its goal is not known).

    A message refused by its handler, or given up on, was decoded once already; decoding it
    again here spares every handler and the in-flight record from carrying its goal along.
    """
    try:
        return decode(raw, body).goal_id
    except Exception:  # whatever did not decode has no goal plangate can vouch for
        return None


def _named_in(headers: dict[str, str], goal_id: str | None = None) -> dict[str, str]:
    """Return the goal and message ids a message's headers name, for its log line.

    Bounded: whoever published the message wrote them. `goal_id`, the body's, is the goal
    when known: a header naming another one (its sender's choice) is kept as
    `header_goal_id`, so a search of the logs by the real goal finds the line.
    """
    said = headers.get(GOAL_HEADER)
    named = {"goal_id": said if goal_id is None else goal_id}
    if goal_id is not None and said not in (None, goal_id):
        named["header_goal_id"] = said
    named["message_id"] = headers.get(MESSAGE_ID_HEADER)
    trace_id = telemetry.trace_id_of(headers)
    if trace_id is not None:
        named["trace_id"] = trace_id  # outside a span: the trace it would join
    return {key: value[:200] for key, value in named.items() if isinstance(value, str) and value}
