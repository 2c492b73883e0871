"""Delivering outbox rows: publish, then mark sent. Unsent rows are found again and resent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select

from plangate.bus import Bus, Envelope
from plangate.store import OutboxRow, Store, outbox
from schemas import utcnow


def deliver(store: Store, bus: Bus, envelopes: Sequence[Envelope]) -> None:
    """Publish committed outbox envelopes from this thread and mark them sent."""
    if envelopes:
        bus.publish(envelopes)
        outbox.mark_sent(store, envelopes)


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
