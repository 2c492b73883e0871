"""An approval an executor could not check (signed by a key it does not trust), noted for `status`.

The goal waits in `approved`, tried again until the key is in the executor's trusted keys
folder; only the executor's log said why, and `status` read "the gate checks the hold and
releases the plan" for as long. The executor notes it in the goal's audit chain once per
reason, and the goal's status shows the newest note while the goal waits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store import AuditRow, Store, audit

KIND = "approval.unchecked"


def note_unchecked(store: Store, goal_id: str, plan_id: str, actor: str, reason: str) -> None:
    """Record that `actor` could not check the goal's approval, unless it said so already."""
    with store.session() as session:
        if unchecked_reason(session, goal_id) == reason:
            return
        data = {"plan_id": plan_id, "reason": reason}
        audit.append(session, KIND, actor=actor, goal_id=goal_id, data=data)


def unchecked_reason(session: Session, goal_id: str) -> str | None:
    """Return why an executor last could not check the goal's approval, if one could not."""
    data = session.execute(
        select(AuditRow.data)
        .where(AuditRow.chain == goal_id, AuditRow.kind == KIND)
        .order_by(AuditRow.chain_seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else None
