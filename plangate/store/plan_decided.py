"""How a revision was decided once held: the decisions on it, and a person's as people read it.

The review page, the review API and `review show --json` read them here alike: the API said
nothing of who rejected a plan, or that an edit had replaced it, while the page said both. A
decision names every approval of the revision too: of a plan two people approved, it named the
second alone, and the first one's comment was only in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store.models import AuditRow, DecisionRow, PlanRow, ReviewerApprovalRow
from plangate.store.plan_edits import edit_of


@dataclass(frozen=True)
class GivenApproval:
    """One reviewer's approval of a held revision (one of several, where a rule asks so)."""

    approved_by: str
    comment: str  # their words, redacted as stored; "" if they gave none
    approved_at: datetime


@dataclass(frozen=True)
class Decided:
    """A decision on a held revision: approve, reject, edit (replaced by it) or expire.

    `decided_by` and `comment` are the last decision's (for four eyes, the approval that
    released it); `approvals` are every approval of the revision, in turn, that one too.
    """

    action: str
    decided_by: str
    comment: str  # their words, redacted as stored; "" if they gave none
    decided_at: datetime
    approvals: tuple[GivenApproval, ...] = ()


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
    approvals = approvals_of(session, plan, row)
    if edit is not None and edit.editor == row.decided_by:
        return Decided("edit", row.decided_by, edit.comment, row.created_at, approvals)
    return Decided(row.action, row.decided_by, row.reason, row.created_at, approvals)


def approvals_of(
    session: Session, plan: PlanRow, person: DecisionRow | None
) -> tuple[GivenApproval, ...]:
    """Return every approval of `plan` recorded, in turn, each with its reviewer's comment.

    An approval that released the plan says its comment in `person`, the revision's decision;
    one of several before it, in its `plan.approval_counted` audit entry.
    """
    rows = session.execute(
        select(ReviewerApprovalRow.reviewer, ReviewerApprovalRow.created_at)
        .where(ReviewerApprovalRow.plan_id == plan.plan_id)
        .order_by(ReviewerApprovalRow.created_at, ReviewerApprovalRow.reviewer)
    ).all()
    counted = session.execute(
        select(AuditRow.actor, AuditRow.data)
        .where(AuditRow.goal_id == plan.goal_id, AuditRow.kind == "plan.approval_counted")
        .order_by(AuditRow.seq)
    ).all()
    said = {
        actor: str(data.get("comment") or "")
        for actor, data in counted
        if isinstance(data, dict) and data.get("plan_id") == plan.plan_id
    }
    final = person if person is not None and person.action == "approve" else None
    if final is not None:
        said[final.decided_by] = final.reason
    given = [GivenApproval(who, said.get(who, ""), at) for who, at in rows]
    if final is not None and final.decided_by not in {each.approved_by for each in given}:
        # Approved before approvals were recorded one by one: the decision is the only record.
        given.append(GivenApproval(final.decided_by, final.reason, final.created_at))
    return tuple(given)
