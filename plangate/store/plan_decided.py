"""How a revision was decided once held: the decisions on it, and a person's as people read it.

The review page, the review API and `review show --json` read them here alike: the API said
nothing of who rejected a plan, or that an edit had replaced it, while the page said both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store.models import DecisionRow, PlanRow
from plangate.store.plan_edits import edit_of


@dataclass(frozen=True)
class Decided:
    """A decision on a held revision: approve, reject, edit (replaced by it) or expire."""

    action: str
    decided_by: str
    comment: str  # their words, redacted as stored; "" if they gave none
    decided_at: datetime


def decisions_of(session: Session, plan_id: str) -> dict[str, DecisionRow]:
    """Return the decisions on a revision by stage: `policy`, and `human` (a person, expiry)."""
    rows = session.execute(select(DecisionRow).where(DecisionRow.plan_id == plan_id)).scalars()
    return {row.stage: row for row in rows}


def decided_of(session: Session, plan: PlanRow, row: DecisionRow) -> Decided:
    """Return a person's (or the expiry's) decision on `plan` as the review shows it.

    An edit takes the old revision's slot for a decision as a reject, with plangate's words
    ("edited into revision 2: ..."): shown as the edit it was, with the editor's own comment.
    """
    next_one = PlanRow.revision == plan.revision + 1
    after = session.execute(
        select(PlanRow).where(PlanRow.goal_id == plan.goal_id, next_one)
    ).scalar_one_or_none()
    edit = edit_of(session, after) if after is not None and row.action == "reject" else None
    if edit is not None and edit.editor == row.decided_by:
        return Decided("edit", row.decided_by, edit.comment, row.created_at)
    return Decided(row.action, row.decided_by, row.reason, row.created_at)
