"""Four eyes: a held revision runs once N distinct authorised reviewers approved it.

Each reviewer's approval of a revision is recorded (`ReviewerApprovalRow`); until the hold's
number is reached the plan stays held and the page says "1 of 2 approvals (alice)". One
reviewer approving twice is refused (it would count once); with more than one needed, the
author of an edit is not one of them; any rejection ends the revision; an edit is a new
revision, whose count starts again. The gate counts again before it signs (every approver
still checked against the hold), and the signed approval names every approver, which the
executor checks against the hold's number.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.approvers import ApproverCheck
from approval_gate.holds import approvals_needed, check_approver
from plangate import metrics
from plangate.errors import AlreadyApproved, Forbidden
from plangate.reviewers import approval_proof
from plangate.store import GoalRow, HoldRow, PlanRow, ReviewerApprovalRow, audit
from plangate.store.claims import insert_if_absent
from plangate.store.plan_revision import PlanRevision
from schemas import utcnow

log = logging.getLogger(__name__)


def approvals_required(hold: HoldRow | None) -> int:
    """Return how many distinct reviewers must approve a revision held so (1 by default)."""
    return approvals_needed(hold) if hold is not None else 1


def count_approval(
    session: Session, plan: PlanRow, reviewer: str, roles: frozenset[str], key: str = ""
) -> list[str]:
    """Record `reviewer`'s approval of this revision; return every approver so far.

    `key` is the hash of the token the reviewer authenticated with: the approval carries its
    proof, which a worker's gate checks (`approval_gate.approvers`). Without one, only a gate
    in this process (the embedded mode) counts it.

    AlreadyApproved if they did so already: a second approval by the same person counts for
    nothing, and saying "recorded" would suggest it did.
    """
    if reviewer in approvers_of(session, plan):
        raise already_approved(reviewer, plan.plan_id)
    row = {
        "plan_id": plan.plan_id,
        "reviewer": reviewer,
        "plan_hash": plan.plan_hash,
        "roles": sorted(roles),
        "created_at": utcnow(),
        "proof": approval_proof(key, plan.plan_id, plan.plan_hash, reviewer) if key else None,
    }
    insert_if_absent(session, ReviewerApprovalRow, row)
    return approvers_of(session, plan)


def already_approved(reviewer: str, plan_id: str, so_far: str = "") -> AlreadyApproved:
    """Return the refusal of `reviewer`'s second approval; `so_far`: "1 of 2 approvals (...)"."""
    far = so_far or "the plan's review says how many it has"
    return AlreadyApproved(
        f"{reviewer} has approved plan {plan_id} already: {far}; it waits for approvals by "
        "other reviewers"
    )


def approvers_of(session: Session, plan: PlanRow) -> list[str]:
    """Return who approved this exact revision (its hash), in the order they approved."""
    rows = session.execute(
        select(ReviewerApprovalRow.reviewer)
        .where(
            ReviewerApprovalRow.plan_id == plan.plan_id,
            ReviewerApprovalRow.plan_hash == plan.plan_hash,
        )
        .order_by(ReviewerApprovalRow.created_at, ReviewerApprovalRow.reviewer)
    )
    return list(rows.scalars())


class TooFewApprovers(Forbidden):
    """Too few of a revision's approvals count; `refused`: the ones that do not (and why)."""

    def __init__(self, message: str, refused: list[ReviewerApprovalRow]) -> None:
        super().__init__(message, "")
        self.refused = refused


def counted_approvers(
    session: Session, plan: PlanRevision | PlanRow, hold: HoldRow | None, check: ApproverCheck
) -> tuple[list[str], list[tuple[ReviewerApprovalRow, str]]]:
    """Return who of this revision's approvers count, in order, and those who do not (and why).

    Each recorded approval is checked, whatever process recorded it: whose it is and their
    roles (`check`), then the hold's bars. The gate counts so before it signs; `serve` and the
    CLI count so too, so that they never say "released" of a plan the gate will not release.
    """
    goal = session.get_one(GoalRow, plan.goal_id)
    allowed: list[str] = []
    refused: list[tuple[ReviewerApprovalRow, str]] = []
    for row in sorted(_approvals(session, plan), key=lambda r: (r.created_at, r.reviewer)):
        try:
            check_approver(session, hold, goal, plan, row.reviewer, check.roles(row))
        except Forbidden as refusal:
            refused.append((row, f"{row.reviewer}'s does not count ({refusal})"))
            continue
        allowed.append(row.reviewer)
    return allowed, refused


def withdraw_void_approval(
    session: Session, plan: PlanRow, reviewer: str, check: ApproverCheck
) -> None:
    """Remove `reviewer`'s approval of this revision if it counts no more: they may approve again.

    Made with a token since replaced (`reviewers remove`, then `add`), the gate refuses it;
    and a second approval was refused as one already given.
    """
    for row in _approvals(session, plan):
        if row.reviewer == reviewer:
            try:
                check.roles(row)
            except Forbidden:
                session.delete(row)
                session.flush()


def _approvals(session: Session, plan: PlanRevision | PlanRow) -> list[ReviewerApprovalRow]:
    return list(
        session.execute(
            select(ReviewerApprovalRow).where(
                ReviewerApprovalRow.plan_id == plan.plan_id,
                ReviewerApprovalRow.plan_hash == plan.plan_hash,
            )
        ).scalars()
    )


def checked_approvers(
    session: Session, plan: PlanRevision, hold: HoldRow | None, check: ApproverCheck
) -> list[str]:
    """Return the approvers of this revision that the hold allows; Forbidden if too few.

    The gate calls this before it signs (see `counted_approvers`).
    """
    allowed, refused = counted_approvers(session, plan, hold, check)
    needed = approvals_required(hold)
    if len(allowed) < needed:
        # Those counted cannot approve again: say that the rest must come from others.
        raise TooFewApprovers(
            f"plan {plan.plan_id} needs {needed} approvals by distinct reviewers the hold "
            f"allows; it has {progress(allowed, needed)}; "
            + "; ".join(why for _, why in refused)
            + f"; {needed - len(allowed)} more reviewer(s) the hold allows must approve it",
            [row for row, _ in refused],
        )
    return allowed


def progress(approvers: list[str], needed: int) -> str:
    """Return how far a revision's approval is, as people read it: "1 of 2 approvals (alice)"."""
    named = f" ({', '.join(approvers)})" if approvers else ""
    return f"{len(approvers)} of {needed} approvals{named}"


def count_only(
    session: Session,
    plan: PlanRow,
    hold: HoldRow | None,
    reviewer: str,
    approvers: list[str],
    comment: str,
    roles: frozenset[str] = frozenset(),
) -> None:
    """Audit one approval of several needed, with its comment and roles; the plan stays held."""
    needed = approvals_required(hold)
    data = {
        "plan_id": plan.plan_id,
        "plan_hash": plan.plan_hash,
        "approvers": approvers,
        "needed": needed,
        "comment": comment,  # redacted and made storable by the audit log, as every string
        "roles": sorted(roles),  # as its reviewer approval's row has them
    }
    audit.append(session, "plan.approval_counted", actor=reviewer, goal_id=plan.goal_id, data=data)
    metrics.decided("approve", None)  # a person's, as the one that releases the plan is
    log.info("plan %s: %s", plan.plan_id, progress(approvers, needed))
