"""Delivering outbox rows: publish, then mark sent. Unsent rows are found again and resent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import timedelta

from sqlalchemy import func, or_, select, update

from plangate.bus import Bus, Envelope
from plangate.errors import BrokerRefused, BrokerUnavailable, BrokerUnreadable
from plangate.lasting import Lasting
from plangate.store import OutboxRow, Store, outbox
from schemas import utcnow

log = logging.getLogger(__name__)

# A broker away for minutes was said at every publish tried (`serve`: every request): said as
# it begins, then at most once a minute, and once when a publish goes through again.
_away = Lasting(every=60.0)
_away_lock = threading.Lock()


def deliver(
    store: Store,
    bus: Bus,
    envelopes: Sequence[Envelope],
    mark: Callable[[Sequence[Envelope]], None] | None = None,
) -> bool:
    """Publish committed outbox envelopes from this thread and mark them sent.

    Marked by `mark` when given (a `SentMarker`, which marks many rows per transaction from a
    thread of its own), else here, in a transaction of their own.

    Returns False when the broker is unreachable, or the publish failed otherwise: the
    envelopes stay in the outbox, and a worker's relay sends them once it can, so the caller has
    lost nothing and need not wait.
    """
    if not envelopes:
        return True
    try:
        bus.publish(envelopes)
    except BrokerUnavailable as exc:
        with _away_lock:
            said = _away.note()
        if said is not None:
            lasted = "" if said == "began" else f" (for {_away.seconds():.0f} s now)"
            log.warning(
                "%s; %d message(s) wait in the outbox for the relay%s",
                exc,
                len(envelopes),
                lasted,
                extra={
                    "broker_problem": str(exc),
                    # Refused or unreadable: this process's settings are wrong, not the
                    # broker away (a command says a worker sends it on with its own).
                    "broker_refused": isinstance(exc, (BrokerRefused, BrokerUnreadable)),
                },
            )
        return False
    except Exception:
        # Committed already: whatever else failed the publish (a broker answering with
        # something kombu cannot read), the relay sends them later, and the caller must not
        # fail, or a client that retries a goal it was told failed makes a second one.
        log.exception(
            "publishing failed; %d message(s) wait in the outbox for the relay", len(envelopes)
        )
        return False
    if _away.active:
        with _away_lock:
            away_for = _away.end()
        if away_for is not None:
            log.warning("the broker takes messages again, after %.0f s", away_for)
    if mark is not None:
        mark(envelopes)
    else:
        outbox.mark_sent(store, envelopes)
    return True


RELAY_LEASE = timedelta(seconds=60)
RELAY_BATCH = 20  # published well within the lease even when each publish needs its retries


def relay_pending(
    store: Store, bus: Bus, older_than: timedelta = timedelta(0), lease: timedelta = RELAY_LEASE
) -> int:
    """Publish outbox rows left unsent (a crash between commit and publish); return the count.

    A row is left unsent once `older_than` has passed since it was due: since it was made, or,
    for a delayed retry, since its `not_before` (the consumer that stored it publishes it then;
    a row not yet due is never sent).

    Each batch is leased in a short transaction (`SKIP LOCKED` on PostgreSQL), published with no
    transaction open, then marked sent: a broker that is slow or gone never holds the store
    (SQLite's one write lock least of all), and several workers relaying at once do not send
    the same row twice. A publish that gives up hands its lease back; a relay that dies leaves
    its lease to run out, and the rows are sent after it.
    """
    count = 0
    while True:
        now = utcnow()
        with store.session() as session:
            rows = list(
                session.execute(
                    select(OutboxRow)
                    .where(
                        OutboxRow.sent_at.is_(None),
                        func.coalesce(OutboxRow.not_before, OutboxRow.created_at)
                        <= now - older_than,
                        or_(OutboxRow.relay_until.is_(None), OutboxRow.relay_until < now),
                    )
                    .order_by(OutboxRow.id)
                    .limit(RELAY_BATCH)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            mine = now + lease
            for row in rows:
                row.relay_until = mine
            batch = [Envelope(r.routing_key, r.body, dict(r.headers), r.id) for r in rows]
        if not batch:
            return count
        try:
            bus.publish(batch)
        except BaseException:
            with suppress(Exception), store.session() as session:  # else the lease runs out
                ids = [envelope.outbox_id for envelope in batch]
                session.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(ids), OutboxRow.relay_until == mine)  # still ours
                    .values(relay_until=None)
                )
            raise
        outbox.mark_sent(store, batch)
        count += len(batch)
