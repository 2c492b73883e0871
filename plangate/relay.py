"""Delivering outbox rows: publish, then mark sent. Unsent rows are found again and resent."""

from __future__ import annotations

from collections.abc import Sequence

from plangate.bus import Bus, Envelope
from plangate.store import Store, outbox


def deliver(store: Store, bus: Bus, envelopes: Sequence[Envelope]) -> None:
    """Publish committed outbox envelopes from this thread and mark them sent."""
    if envelopes:
        bus.publish(envelopes)
        outbox.mark_sent(store, envelopes)


def relay_pending(store: Store, bus: Bus) -> int:
    """Publish every outbox row left unsent (a crash between commit and publish); return count."""
    count = 0
    while batch := outbox.pending(store):
        deliver(store, bus, batch)
        count += len(batch)
    return count
