"""The audit log's entries read out in log order, as `plangate audit export` writes them."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select

from plangate.store.audit import AS_STORED, stored_data
from plangate.store.engine import Store
from plangate.store.models import AuditRow

EXPORT_FIELDS = (
    "seq",
    "chain",
    "chain_seq",
    "at",
    "goal_id",
    "kind",
    "actor",
    "data",
    "prev_hash",
    "hash",
)


def goals_unlogged(store: Store, goal_ids: Collection[str]) -> list[str]:
    """Return those of `goal_ids` of which the log holds no entry (a mistyped id), in order."""
    with store.reading() as session:
        logged = set(
            session.scalars(
                select(AuditRow.goal_id).where(AuditRow.goal_id.in_(goal_ids)).distinct()
            )
        )
    return [goal_id for goal_id in goal_ids if goal_id not in logged]


def export(
    store: Store,
    *,
    since: datetime | None = None,
    goal_ids: Collection[str] | None = None,
    batch: int = 500,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield audit entries in `seq` order (from `since`, before `until`, of these goals), hashed.

    Read in batches so an export of a long history never holds it all in memory.
    """
    after = 0
    while True:
        query = select(*AS_STORED).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(batch)
        if goal_ids is not None:
            query = query.where(AuditRow.goal_id.in_(goal_ids))
        with store.reading() as session:
            rows = list(session.execute(query).all())
        entries = [
            {field: getattr(row, field) for field in EXPORT_FIELDS}
            | {"data": stored_data(row.seq, row.data)}
            for row in rows
        ]
        if not entries:
            return
        for entry in entries:
            at = datetime.fromisoformat(entry["at"])
            if (since is None or at >= since) and (until is None or at < until):
                yield entry
        after = entries[-1]["seq"]
