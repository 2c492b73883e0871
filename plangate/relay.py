"""Delivering outbox rows: publish, then mark sent. Unsent rows are found again and resent."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select

from plangate.bus import Bus, Envelope
from plangate.errors import BrokerUnavailable
from plangate.store import OutboxRow, Store, outbox
from schemas import utcnow

log = logging.getLogger(__name__)


def deliver(store: Store, bus: Bus, envelopes: Sequence[Envelope]) -> bool:
    """Publish committed outbox envelopes from this thread and mark them sent.

    Returns False when the broker is unreachable: the envelopes stay in the outbox, and a
    worker's relay sends them once it is back, so the caller has lost nothing and need not wait.
    """
    if not envelopes:
        return True
    try:
        bus.publish(envelopes)
    except BrokerUnavailable as exc:
        log.warning("%s; %d message(s) wait in the outbox for the relay", exc, len(envelopes))
        return False
    outbox.mark_sent(store, envelopes)
    return True


def relay_pending(store: Store, bus: Bus, older_than: timedelta = timedelta(0)) -> int:
    """Publish outbox rows left unsent (a crash between commit and publish); return the count.

    Rows are locked while they are published (`SKIP LOCKED` on PostgreSQL), so several
    workers relaying at once do not send the same row twice.
    """
    count = 0
    while True:
        with store.session() as session:
            rows = list(
                session.execute(
                    select(OutboxRow)
                    .where(
                        OutboxRow.sent_at.is_(None), OutboxRow.created_at <= utcnow() - older_than
                    )
                    .order_by(OutboxRow.id)
                    .limit(100)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not rows:
                return count
            bus.publish([Envelope(r.routing_key, r.body, dict(r.headers), r.id) for r in rows])
            now = utcnow()
            for row in rows:
                row.sent_at = now
            count += len(rows)
