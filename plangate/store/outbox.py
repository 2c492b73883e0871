"""The outbox: messages stored with the effects that caused them, published afterwards.

A handler adds its outgoing envelopes in its own transaction; after the commit the consumer
publishes them and marks them sent. `pending` finds rows left unsent by a crash, for the relay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from plangate import telemetry
from plangate.bus import Envelope
from plangate.store.engine import Store
from plangate.store.models import OutboxRow
from schemas import Message, utcnow


def add(session: Session, envelope: Envelope) -> Envelope:
    """Store an envelope in the caller's transaction; return it tagged with its outbox id."""
    row = OutboxRow(
        routing_key=envelope.routing_key, body=envelope.body, headers=dict(envelope.headers)
    )
    session.add(row)
    session.flush()
    return Envelope(envelope.routing_key, envelope.body, dict(envelope.headers), outbox_id=row.id)


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


def mark_sent(store: Store, envelopes: Sequence[Envelope]) -> None:
    """Record that these envelopes reached the broker."""
    ids = [e.outbox_id for e in envelopes if e.outbox_id is not None]
    if ids:
        with store.session() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id.in_(ids)).values(sent_at=utcnow()))
