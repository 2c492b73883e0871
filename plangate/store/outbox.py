"""The outbox: messages stored with the effects that caused them, published afterwards.

A handler adds its outgoing envelopes in its own transaction; after the commit the consumer
publishes them and marks them sent. The relay finds rows left unsent by a crash. A delayed retry
is a row with a `not_before` time: the consumer that stored it publishes it then, or the relay
does if that consumer is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from plangate import telemetry
from plangate.bus import Envelope
from plangate.bus.envelope import GOAL_HEADER
from plangate.store.engine import Store, is_outage
from plangate.store.hot_statements import HotStatement
from plangate.store.models import OutboxRow
from plangate.store.outages import store_answered, store_failed
from schemas import Message, utcnow

log = logging.getLogger(__name__)


# Plain statements, not the ORM's unit of work: every message of every stage passes here.
_OUTBOX = cast(Table, OutboxRow.__table__)
_INSERT = HotStatement(
    insert(_OUTBOX), ("routing_key", "body", "headers", "created_at", "not_before")
)
_MARK_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(sent_at=bindparam("now", type_=_OUTBOX.c.sent_at.type))
)


def add(session: Session, envelope: Envelope, not_before: datetime | None = None) -> Envelope:
    """Store an envelope in the caller's transaction; return it tagged with its outbox id.

    With `not_before`, the row is not published (by the relay) before that time.
    """
    headers = dict(envelope.headers)
    row: dict[str, Any] = {
        "routing_key": envelope.routing_key,
        "body": envelope.body,
        "headers": headers,
        "created_at": utcnow(),
        "not_before": not_before,
    }
    outbox_id = _INSERT.inserted_id(session, row)
    return Envelope(envelope.routing_key, envelope.body, headers, outbox_id=outbox_id)


def emit(
    session: Session, message: Message, trace_headers: Mapping[str, str] | None = None
) -> Envelope:
    """Store a message to publish after this transaction commits.

    It carries the current trace, or the one in `trace_headers` (a message sent again later).
    """
    headers: dict[str, str] = {}
    if trace_headers is not None:
        headers.update({k: v for k, v in trace_headers.items() if k in telemetry.TRACE_HEADERS})
    else:
        telemetry.inject(headers)
    return add(session, Envelope.of(message, headers))


def defer(store: Store, envelope: Envelope, delay: float) -> Envelope:
    """Store an envelope to be published `delay` seconds from now, in a transaction of its own."""
    with store.session() as session:
        return add(session, envelope, not_before=utcnow() + timedelta(seconds=delay))


def delayed_retries(
    session: Session, since: datetime, limit: int = 10_000
) -> dict[str, datetime | None]:
    """Return, per goal, when its latest delayed retry was republished (None: not yet).

    Only retries still waiting in the outbox, or republished after `since`. A waiting one is
    sent when due (by its consumer or the relay): its goal's message is not lost. A republished
    one went to the back of its queue at that time.
    """
    rows = session.execute(
        select(OutboxRow.headers, OutboxRow.sent_at)
        .where(
            OutboxRow.not_before.is_not(None),
            or_(OutboxRow.sent_at.is_(None), OutboxRow.sent_at >= since),
        )
        .limit(limit)
    )
    retries: dict[str, datetime | None] = {}
    for headers, sent in rows:
        goal_id = headers.get(GOAL_HEADER)
        if not isinstance(goal_id, str):
            continue
        if sent is None or (goal_id in retries and retries[goal_id] is None):
            retries[goal_id] = None  # one still waits: that is what counts
        else:
            retries[goal_id] = max(sent, retries.get(goal_id) or sent)
    return retries


# How long a sent row is kept: for a person looking into what was sent, and for the reconciler's
# look at delayed retries republished lately (`delayed_retries`: an hour or so). Rows were
# never removed: the outbox grew to the largest table (4.6 KB a goal, 50 MB at 11,000 goals).
SENT_KEPT = timedelta(days=1)
PRUNED_AT_ONCE = 1000  # rows a delete takes: short write transactions, whatever the backlog


def prune_sent(store: Store, kept: timedelta = SENT_KEPT) -> int:
    """Delete rows sent longer than `kept` ago, a batch at a time; return how many went."""
    cutoff = utcnow() - kept
    removed = 0
    while True:
        with store.session() as session:
            oldest = (
                select(OutboxRow.id)
                .where(OutboxRow.sent_at.is_not(None), OutboxRow.sent_at < cutoff)
                .order_by(OutboxRow.id)
                .limit(PRUNED_AT_ONCE)
            )
            ids = list(session.execute(oldest).scalars())
            if ids:
                session.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))
        removed += len(ids)
        if len(ids) < PRUNED_AT_ONCE:
            return removed


def mark_sent(store: Store, envelopes: Sequence[Envelope]) -> None:
    """Record that these envelopes reached the broker."""
    ids = [e.outbox_id for e in envelopes if e.outbox_id is not None]
    if ids:
        with store.session() as session:
            session.execute(_MARK_SENT, {"ids": ids, "now": utcnow()})


class SentMarker:
    """Marks published envelopes sent from a thread of its own, many rows per transaction.

    A consumer acks as soon as it has published; marking is bookkeeping for the relay, which
    resends only rows unsent for `PLANGATE_RELAY_AFTER_SECONDS`, so a mark made a moment later
    (or lost with the process) costs at most a harmless duplicate, never a message.
    """

    def __init__(self, store: Store, interval: float = 0.5) -> None:
        self._store = store
        self._interval = interval
        self._pending: list[Envelope] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plangate-outbox", daemon=True)
        self._thread.start()

    def __call__(self, envelopes: Sequence[Envelope]) -> None:
        """Queue these envelopes to be marked sent."""
        with self._lock:
            self._pending.extend(e for e in envelopes if e.outbox_id is not None)
        self._wake.set()

    def defer(self, envelope: Envelope, delay: float) -> Envelope:
        """Store a consumer's retry to be published `delay` seconds from now (see `defer`)."""
        return defer(self._store, envelope, delay)

    def close(self, timeout: float = 10.0) -> None:
        """Mark what is queued, then stop (rows left unmarked are resent later: harmless)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "outbox rows were not all marked sent within %g s; the relay resends them", timeout
            )

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._closing.wait(self._interval)  # let a batch gather, unless closing
            self._wake.clear()
            self._flush()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            mark_sent(self._store, batch)
        except Exception as exc:  # the relay resends them: a duplicate, never a loss
            if not is_outage(exc):  # a fault of plangate's: its traceback says where
                log.warning("could not mark %d outbox rows sent", len(batch), exc_info=True)
                return
            # The outage is said once for the process; each batch left unmarked, in a line.
            store_failed(self._store, exc, "the outbox's marks")
            log.info("could not mark %d outbox rows sent: the relay sends them again", len(batch))
            return
        store_answered(self._store)
