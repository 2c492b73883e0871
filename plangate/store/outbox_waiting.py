"""What waits in the outbox for a broker that did not take it: read without the broker's code.

`plangate status` says so of a goal (it said only "submitted"), and `plangate run` of other
goals left in its store for a deployment's workers. Neither loads kombu to read a table.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from plangate.store.engine import Store
from plangate.store.models import OutboxRow
from schemas import utcnow
from schemas.headers import GOAL_HEADER

_OUTBOX = cast(Table, OutboxRow.__table__)
# Unsent longer than this, a message waits for the broker (a publish takes milliseconds, and
# the marks are written every half second).
STUCK_AFTER = timedelta(seconds=5)


def unsent_elsewhere(
    store: Store, goal_ids: Collection[str], stuck_after: timedelta = STUCK_AFTER
) -> int:
    """Return how many outbox rows of goals other than `goal_ids` wait unsent past `stuck_after`.

    One younger is being published by the process that stored it (another `plangate run` on
    the same data folder, live): it was counted as left for a deployment's workers.
    """
    cutoff = utcnow() - stuck_after
    with store.session() as session:
        headers = session.execute(
            select(_OUTBOX.c.headers).where(
                _OUTBOX.c.sent_at.is_(None), _OUTBOX.c.created_at < cutoff
            )
        )
        return sum(1 for (row,) in headers if row.get(GOAL_HEADER) not in goal_ids)


def waiting_since(
    session: Session, goal_id: str, stuck_after: timedelta = STUCK_AFTER
) -> datetime | None:
    """Return since when a message of the goal has waited unsent in the outbox, if one has.

    Only a message due and older than `stuck_after`: one just stored is being published, and
    a delayed retry waits for its time, not for the broker.
    """
    now = utcnow()
    rows = session.execute(
        select(_OUTBOX.c.headers, _OUTBOX.c.created_at, _OUTBOX.c.not_before).where(
            _OUTBOX.c.sent_at.is_(None), _OUTBOX.c.created_at < now - stuck_after
        )
    )
    return min(
        (
            created
            for headers, created, not_before in rows
            if headers.get(GOAL_HEADER) == goal_id and (not_before is None or not_before <= now)
        ),
        default=None,
    )
