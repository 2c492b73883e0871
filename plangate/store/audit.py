"""The append-only audit log: each entry hashes the one before, so tampering shows.

What an entry records is redacted before it is hashed and stored (`plangate.redaction`), and
text that cannot be encoded is replaced, so a secret never enters the log and no hash fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from plangate.redaction import redact
from plangate.store.claims import insert_if_absent
from plangate.store.engine import Store
from plangate.store.models import AuditHeadRow, AuditRow
from schemas import canonical_json, utcnow
from schemas.decoding import storable_text
from schemas.hashing import sha256_hex

GENESIS = "0" * 64

# Built once: statements made anew on every append took a third of its time.
_HEAD_TABLE = cast(Table, AuditHeadRow.__table__)
_HEAD = select(_HEAD_TABLE.c.seq, _HEAD_TABLE.c.hash).where(_HEAD_TABLE.c.id == 1).with_for_update()
_INSERT_ENTRY = insert(cast(Table, AuditRow.__table__))
_MOVE_HEAD = (
    update(_HEAD_TABLE)
    .where(_HEAD_TABLE.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


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
) -> int:
    """Append an entry in the caller's transaction (so it commits with the effect it records).

    Returns the entry's sequence number. Written with plain statements, not the ORM's unit of
    work: every state change of every goal passes here, and the ORM took three times as long.
    """
    head = session.execute(_HEAD).one_or_none()
    if head is None:
        # Only the very first append creates the head, and two first appends cannot both
        # create it: whichever inserts second inserts nothing, then waits on the lock.
        insert_if_absent(session, AuditHeadRow, {"id": 1, "seq": 0, "hash": GENESIS})
        head = session.execute(_HEAD).one()
    prev_seq, prev_hash = int(head.seq), str(head.hash)
    payload: dict[str, Any] = _outward(dict(data or {}))
    actor = _outward(actor)
    seq = prev_seq + 1
    at = utcnow().isoformat()
    digest = entry_hash(prev_hash, seq, at, goal_id, kind, actor, payload)
    entry = {"seq": seq, "at": at, "goal_id": goal_id, "kind": kind, "actor": actor}
    entry |= {"data": payload, "prev_hash": prev_hash, "hash": digest}
    session.execute(_INSERT_ENTRY, entry)
    session.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": digest})
    return seq


def _outward(value: Any) -> Any:
    """Return `value` with every string (keys too) redacted and made storable."""
    if isinstance(value, str):
        return storable_text(redact(value))
    if isinstance(value, dict):
        return {_outward(key): _outward(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_outward(item) for item in value]
    return value


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
