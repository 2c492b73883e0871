"""The append-only audit log: each entry hashes the one before, so tampering shows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store.claims import insert_if_absent
from plangate.store.engine import Store
from plangate.store.models import AuditHeadRow, AuditRow
from schemas import canonical_json, utcnow
from schemas.hashing import sha256_hex

GENESIS = "0" * 64


def entry_hash(
    prev_hash: str,
    seq: int,
    at: str,
    goal_id: str | None,
    kind: str,
    actor: str,
    data: dict[str, Any],
) -> str:
    """Return the hash that chains an entry to its predecessor."""
    body = {"seq": seq, "at": at, "goal_id": goal_id, "kind": kind, "actor": actor, "data": data}
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(body))


def append(
    session: Session,
    kind: str,
    *,
    actor: str,
    goal_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditRow:
    """Append an entry in the caller's transaction (so it commits with the effect it records)."""
    locked = select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
    head = session.execute(locked).scalar_one_or_none()
    if head is None:
        # Only the very first append creates the head, and two first appends cannot both
        # create it: whichever inserts second inserts nothing, then waits on the lock.
        insert_if_absent(session, AuditHeadRow, {"id": 1, "seq": 0, "hash": GENESIS})
        head = session.execute(locked).scalar_one()
    payload = dict(data or {})
    seq = head.seq + 1
    at = utcnow().isoformat()
    digest = entry_hash(head.hash, seq, at, goal_id, kind, actor, payload)
    row = AuditRow(
        seq=seq,
        at=at,
        goal_id=goal_id,
        kind=kind,
        actor=actor,
        data=payload,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(row)
    head.seq, head.hash = seq, digest
    session.flush()
    return row


@dataclass(frozen=True)
class AuditReport:
    """The result of checking the chain: how many entries, and the first broken link if any."""

    entries: int
    broken_at: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Return True when every link holds."""
        return self.broken_at is None


def verify(store: Store) -> AuditReport:
    """Walk the chain from the start and report the first entry that does not hold."""
    prev, count = GENESIS, 0
    with store.session() as session:
        for row in session.execute(select(AuditRow).order_by(AuditRow.seq)).scalars():
            count += 1
            if row.seq != count:
                return AuditReport(count, row.seq, f"entry {count} is missing")
            if row.prev_hash != prev:
                return AuditReport(count, row.seq, "does not follow the entry before it")
            expected = entry_hash(prev, row.seq, row.at, row.goal_id, row.kind, row.actor, row.data)
            if row.hash != expected:
                return AuditReport(count, row.seq, "its content does not match its hash")
            prev = row.hash
        head = session.get(AuditHeadRow, 1)
    if head is not None and (head.seq, head.hash) != (count, prev):
        return AuditReport(count, count + 1, "entries after this one were removed")
    return AuditReport(count)


EXPORT_FIELDS = ("seq", "at", "goal_id", "kind", "actor", "data", "prev_hash", "hash")


def export(
    store: Store, *, since: datetime | None = None, goal_id: str | None = None, batch: int = 500
) -> Iterator[dict[str, Any]]:
    """Yield audit entries in chain order (optionally from `since`, for one goal), with hashes.

    Read in batches so an export of a long history never holds it all in memory.
    """
    after = 0
    while True:
        query = select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(batch)
        if goal_id is not None:
            query = query.where(AuditRow.goal_id == goal_id)
        with store.session() as session:
            rows = list(session.execute(query).scalars())
            entries = [{field: getattr(row, field) for field in EXPORT_FIELDS} for row in rows]
        if not entries:
            return
        for entry in entries:
            if since is None or datetime.fromisoformat(entry["at"]) >= since:
                yield entry
        after = entries[-1]["seq"]
