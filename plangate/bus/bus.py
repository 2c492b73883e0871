"""The bus: kombu behind a small interface. Only `plangate.bus` imports kombu.

A `Bus` is a factory: each thread that publishes gets its own connection (kombu connections and
channels are not thread-safe), and each consumer loop opens its own.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from kombu.connection import Connection
from kombu.exceptions import OperationalError
from kombu.messaging import Producer
from kombu.utils.url import maybe_sanitize_url

from plangate.bus import memory_transport, redis_transport
from plangate.bus.broker_view import BrokerView
from plangate.bus.consumer import Handler, StageConsumer
from plangate.bus.dead_letters import decode_dead_letter, still_refused, was_cut
from plangate.bus.envelope import ATTEMPT_HEADER, Envelope
from plangate.bus.inbound import raw_body, text_headers
from plangate.bus.middleware import Middleware
from plangate.bus.observer import Observer
from plangate.bus.producers import PUBLISH_RETRY_POLICY, ThreadProducers, publish
from plangate.bus.reconnect import out_of_reach, refusal_hint, unreadable
from plangate.bus.redis_claims import REDELIVERY_AFTER_SECONDS
from plangate.bus.redis_peek import peek, remove
from plangate.bus.retries import RETRY_DELAYS, DeferHook
from plangate.bus.settlement import PublishedHook
from plangate.bus.topology import STAGES, Stage, Topology
from plangate.errors import BrokerRefused, BrokerUnavailable, BrokerUnreadable
from schemas import DeadLetter

# AMQP publishes are fire-and-forget unless confirmed: with confirms, `publish` returns once
# RabbitMQ has the message (or raises), so "publish, then ack" cannot lose it.
# kombu's Redis consumer scans for unacked messages to restore on every 10th empty poll; a
# busy stage comes out of its wait every few milliseconds (see consumer.py), and that scan (a
# lock and a range query) took a tenth of a worker's CPU. Every 1000th poll still runs it about
# every minute when idle, far inside the hour a message stays invisible.
_REDIS: dict[str, Any] = {"unacked_restore_throttle": 1000}
_CONFIRMED: dict[str, Any] = {"confirm_publish": True}
_TRANSPORT_OPTIONS: dict[str, dict[str, Any]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "amqp": _CONFIRMED,
    "amqps": _CONFIRMED,
    "pyamqp": _CONFIRMED,
}
# Entries pushed raw onto a Redis list are checked before kombu reads them (redis_transport.py);
# the memory transport waits for a put instead of polling (memory_transport.py).
_TRANSPORTS: dict[str, type] = {
    "redis": redis_transport.Transport,
    "rediss": redis_transport.Transport,
    "memory": memory_transport.Transport,
}
# A consume loop's AMQP connection exchanges heartbeats, so a broker (or a network path) that
# went silent is noticed within two of them instead of never; the loop services them.
# Publishing connections have none: nobody would service them while they sit idle.
AMQP_HEARTBEAT_SECONDS = 60.0
# A view's connection is kept between sweeps: a broker that went silent (a host gone, no reset)
# must not hold a sweep for the minutes TCP takes to give up. Its reads are a command or two,
# as a publish's are: at 10 s each (and once more on a new connection), a worker said a Redis
# that stopped answering 33 s after it did, while its /readyz said so in 4 s.
VIEW_READ_TIMEOUT_SECONDS = 2.0
# A publish is a command or two, answered in milliseconds: a Redis that stopped answering (a
# stuck server, packets dropped) held `serve`'s goal intake with no end, its retry policy never
# started, as no error came. Timed out, it is an outage like any, and the goal waits stored.
PUBLISH_READ_TIMEOUT_SECONDS = 2.0


class Bus:
    """Publish envelopes and run stage consumers on one broker URL and namespace.

    `retry_policy` (kombu's) bounds how long a publish waits out a lost broker before it
    raises BrokerUnavailable (about 5 s by default); None waits until the broker is back.
    `heartbeat` is the AMQP heartbeat of consume loops, in seconds (0: none).
    `redelivery_after` is how soon, on Redis, a dead consumer's messages go back to their
    queues (`plangate.bus.redis_claims`).
    """

    def __init__(
        self,
        url: str,
        namespace: str = "plangate",
        retry_policy: dict[str, Any] | None = PUBLISH_RETRY_POLICY,
        heartbeat: float = AMQP_HEARTBEAT_SECONDS,
        redelivery_after: float = REDELIVERY_AFTER_SECONDS,
    ) -> None:
        self.url = url
        # On Redis, dead letters are read and taken where they are (`redis_peek`).
        self._on_redis = url.split("://", 1)[0] in redis_transport.SCHEMES
        self._redelivery_after = redelivery_after
        self.topology = Topology(namespace)
        self._retry_policy = retry_policy
        self.heartbeat = heartbeat
        self._producers = ThreadProducers(self._publishing, self.topology, retry_policy)
        with self.connection() as probe:  # not connected: asking the transport is enough
            # Connection errors only: a channel error (a server's refusal, a KeyError) is no
            # outage, and must not be reported as one.
            self._outages = (OperationalError, *probe.connection_errors)

    def connection(self, heartbeat: float = 0, read_timeout: float | None = None) -> Connection:
        """Open a new kombu connection to the broker (the caller owns and closes it).

        With `heartbeat`, an AMQP connection's owner must call `heartbeat_check` every second.
        `read_timeout` bounds each Redis command's wait for an answer (none by default: a
        consume loop's blocking reads wait for messages); AMQP's sockets have their own.
        """
        scheme = self.url.split("://", 1)[0]
        options = dict(_TRANSPORT_OPTIONS.get(scheme, {}))  # a copy: kombu keeps what it gets
        if scheme in redis_transport.SCHEMES:
            if read_timeout is not None:
                options |= {
                    "socket_timeout": read_timeout,
                    "socket_connect_timeout": read_timeout,
                    "socket_keepalive": True,
                }
            options["visibility_timeout"] = self._redelivery_after
            # A worker SIGKILLed inside its restore sweep leaves kombu's restore lock held
            # for its expiry (300 s by default): no one restored anything meanwhile. Held
            # no longer than the timeout, a dead worker's messages still come back within
            # two timeouts (a restore taking longer than that may at worst restore twice).
            options["unacked_mutex_expire"] = self._redelivery_after
        return Connection(
            self.url,
            transport=_TRANSPORTS.get(scheme),  # None: the transport the URL names
            transport_options=options,
            connect_timeout=5,
            heartbeat=heartbeat,
        )

    def _publishing(self) -> Connection:
        """Open a connection to publish on: each command's wait for an answer bounded."""
        return self.connection(read_timeout=PUBLISH_READ_TIMEOUT_SECONDS)

    def declare(self) -> None:
        """Declare the exchange and every durable queue, so no early message is dropped."""
        with self._reachable():
            self._producers.producer()

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish envelopes from the calling thread (on its own connection).

        Raises BrokerUnavailable when the broker stays unreachable past the retry policy.
        """
        with self._reachable():
            self._producers.publish(envelopes)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Raise what the transport says of a broker it cannot reach as BrokerUnavailable."""
        try:
            yield
        except Exception as exc:
            hint = refusal_hint(exc)
            if hint is not None:
                raise BrokerRefused(
                    f"the broker at {maybe_sanitize_url(self.url)} refuses plangate ({exc}); {hint}"
                ) from exc
            if unreadable(exc):
                raise BrokerUnreadable(
                    f"{BrokerUnreadable.reason}: {maybe_sanitize_url(self.url)} answered "
                    f"({exc}); {BrokerUnreadable.fix}"
                ) from exc
            if not isinstance(exc, self._outages):
                raise
            raise BrokerUnavailable(out_of_reach(maybe_sanitize_url(self.url), exc)) from exc

    def publish_one(self, envelope: Envelope) -> None:
        """Publish one envelope from the calling thread (on its own connection)."""
        self.publish([envelope])

    def stage_consumer(
        self,
        stage: Stage,
        handler: Handler,
        *,
        concurrency: int = 4,
        max_attempts: int = 3,
        on_published: PublishedHook | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        defer: DeferHook | None = None,
        handler_deadline: float | None = None,
        middleware: Sequence[Middleware] | None = None,
    ) -> StageConsumer:
        """Return the consume loop of one stage; call `.run(stop)` in the thread that owns it.

        `defer` (or an `on_published` that can defer) stores delayed retries durably, so that
        they hold no slot while they wait; see `StageConsumer`. A handler still running after
        `handler_deadline` seconds is reported and its message handed back to the stage.
        `middleware` is what is done around each message (`plangate.bus.middleware`); by
        default `plangate.middleware.standard(stage)`.
        """
        return StageConsumer(
            self._publishing,
            self.topology,
            stage,
            handler,
            concurrency=concurrency,
            max_attempts=max_attempts,
            on_published=on_published,
            retry_delays=retry_delays,
            defer=defer,
            consume_connection=partial(self.connection, heartbeat=self.heartbeat),
            handler_deadline=handler_deadline,
            middleware=middleware,
        )

    @contextmanager
    def observe(self, types: Collection[str] | None = None) -> Iterator[Observer]:
        """Receive a copy of every stage message published while the observer is open.

        With `types`, only messages of those types: a caller that waits for outcomes need not
        decode every step's.
        """
        with self.connection() as connection:
            observer = Observer(connection, self.topology, types)
            try:
                yield observer
            finally:
                observer.close()

    def view(self, read_timeout: float = VIEW_READ_TIMEOUT_SECONDS) -> BrokerView:
        """Return reads of the broker's state on one connection kept across them (close it).

        For one thread that reads again and again (a worker's sweep); its reads raise
        BrokerUnavailable as `queue_depth` does. `read_timeout`: seconds each read (and the
        connection's start) may wait for the broker's answer.
        """
        connect = partial(self.connection, read_timeout=read_timeout)
        return BrokerView(self.url, self.topology, connect, self._reachable, self._outages)

    def queue_depth(self, stage: Stage, read_timeout: float = VIEW_READ_TIMEOUT_SECONDS) -> int:
        """Return how many messages wait in a stage's queue."""
        with self.view(read_timeout) as view:
            return view.queue_depth(stage)

    def held_goal_ids(self) -> set[str]:
        """Return the goals whose message a consumer holds unacked (see `BrokerView`)."""
        with self.view() as view:
            return view.held_goal_ids()

    def take_dead_letters(self) -> list[DeadLetter]:
        """Remove and return every dead letter waiting in the dead-letter queue."""
        return self._sort_dead_letters(lambda _: False)[1]

    def purge_dead_letters(self, message_ids: Collection[str] | None = None) -> list[DeadLetter]:
        """Remove dead letters for good (all, or those with these ids); return those removed.

        A letter that cannot be read is never removed (see `_sort_dead_letters`).
        """
        wanted = None if message_ids is None else set(message_ids)
        return self._sort_dead_letters(
            lambda letter: wanted is not None and letter.message_id not in wanted
        )[1]

    def dead_letters(self) -> list[DeadLetter]:
        """Return every dead letter, leaving them in the queue (oldest first)."""
        return self.read_dead_letters()[0]

    def read_dead_letters(self) -> tuple[list[DeadLetter], int]:
        """Return every dead letter (oldest first) and how many entries were none, all kept.

        An entry that is no dead letter (pushed onto the queue by something else) is counted,
        so that a listing can say the queue holds more than it shows.
        """
        kept, _taken, unreadable = self._sort_dead_letters(lambda _: True)
        return kept, unreadable

    def replay_dead_letters(self, message_ids: Collection[str] | None = None) -> list[DeadLetter]:
        """Send dead letters (all, or those with these ids) back to the stage that failed them.

        The original body and headers go to that stage's retry key with a fresh attempt count;
        the rest stay in the dead-letter queue. Returns the letters replayed.
        """
        wanted = None if message_ids is None else set(message_ids)
        stages = {self.topology.queue_name(stage): stage for stage in STAGES}

        def stays(letter: DeadLetter) -> bool:
            # A letter from a queue we do not know stays for a person to look at; so does one
            # whose body was cut (replayed, it failed anew as not JSON, its reason lost), or
            # one this code still refuses as it is (it would come back at once, renamed).
            chosen = wanted is None or letter.message_id in wanted
            if not chosen or letter.queue not in stages:
                return True
            return was_cut(letter) or still_refused(letter, stages[letter.queue])

        def replayed(letter: DeadLetter) -> Envelope:
            return Envelope(
                self.topology.retry_key(stages[letter.queue]),
                base64.b64decode(letter.body_b64),
                {k: v for k, v in letter.headers.items() if k != ATTEMPT_HEADER},
            )

        return self._sort_dead_letters(stays, forward=replayed)[1]

    def _sort_dead_letters(
        self,
        keep: Callable[[DeadLetter], bool],
        forward: Callable[[DeadLetter], Envelope] | None = None,
    ) -> tuple[list[DeadLetter], list[DeadLetter], int]:
        """Take every dead letter; put back those `keep` accepts; return (kept, taken, unread).

        A taken letter is first published as `forward` makes it, if given. Each letter leaves
        the queue only once what it became is published: if the broker goes away midway, the
        letters not yet acked come back. A letter that cannot be read is always put back: the
        queue is never emptied of something an operator has not seen.
        """
        if self._on_redis:
            return self._sort_dead_letters_in_place(keep, forward)
        kept: list[DeadLetter] = []
        taken: list[DeadLetter] = []
        unreadable = 0
        with self._reachable(), self.connection() as connection:
            channel = connection.channel()
            queue = self.topology.dead_letter_queue().bind(channel)
            queue.declare()
            producer = Producer(channel, exchange=self.topology.exchange)
            raws = []
            while (raw := queue.get(no_ack=False, accept=["application/json"])) is not None:
                raws.append(raw)
            for raw in raws:
                body = raw_body(raw)
                try:
                    letter = decode_dead_letter(body)
                except ValueError:
                    letter = None
                if letter is None or keep(letter):
                    if letter is not None:
                        kept.append(letter)
                    else:
                        unreadable += 1
                    # Back into the queue alone: through the exchange, whoever watches
                    # `dead.#` (an alert) got each letter again every time one was listed.
                    envelope = Envelope(queue.name, body, text_headers(raw))
                    publish(producer, self.topology, envelope, self._retry_policy, to_queue=True)
                else:
                    if forward is not None:
                        publish(producer, self.topology, forward(letter), self._retry_policy)
                    taken.append(letter)
                raw.ack()
        return kept, taken, unreadable

    def _sort_dead_letters_in_place(
        self,
        keep: Callable[[DeadLetter], bool],
        forward: Callable[[DeadLetter], Envelope] | None,
    ) -> tuple[list[DeadLetter], list[DeadLetter], int]:
        """As `_sort_dead_letters`, on Redis: only the letters taken are touched, one by one."""
        kept: list[DeadLetter] = []
        taken: list[DeadLetter] = []
        with self._reachable(), self.connection() as connection:
            channel = connection.channel()
            producer = Producer(channel, exchange=self.topology.exchange)
            entries, unreadable = peek(channel, self.topology.dead_letter_queue_name)
            for entry in entries:
                try:
                    letter = decode_dead_letter(entry.body or b"")
                except ValueError:
                    unreadable += 1
                    continue
                if keep(letter):
                    kept.append(letter)
                    continue
                if forward is not None:  # published, then removed: at worst sent twice
                    publish(producer, self.topology, forward(letter), self._retry_policy)
                remove(channel, entry)
                taken.append(letter)
        return kept, taken, unreadable

    def close(self) -> None:
        """Close every publishing connection this bus opened."""
        self._producers.close()
