"""Releasing a person's approval: the gate checks it against the hold, then signs.

Only gate workers hold the signing key. A reviewer's approval (web page, API or CLI) is stored
with the authenticated reviewer and their roles, and a `review.decided` message wakes a gate.
The gate acts on the stored decision, never on what the message says: it finds the person's
approval of this exact revision, checks the reviewer against the hold the gate itself recorded
(required roles), and signs the approval. A decision that fails the check is withdrawn: the
goal goes back to `held`, and the refusal is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.approvals import TooFewApprovers, checked_approvers
from approval_gate.approvers import ApproverCheck
from approval_gate.decisions import approval_issued, decision_of, follow_decision
from approval_gate.holds import check_open, check_sealed, hold_of
from plangate.bus import Envelope
from plangate.errors import Conflict, Forbidden, Reject
from plangate.signing import Signer, TrustedKeys
from plangate.store import ApprovalRow, DecisionRow, GoalRow, PlanRow, audit
from plangate.store.goals import latest_plan, transition
from plangate.store.plan_revision import PlanRevision
from schemas import ReviewDecided

log = logging.getLogger(__name__)
ACTOR = "gate"


@dataclass(frozen=True)
class Signing:
    """What releasing takes from the gate: its key, the approvals' lifetime, its seals' keys."""

    signer: Signer
    ttl: timedelta
    hold_keys: TrustedKeys


def person_decision(session: Session, plan_id: str) -> DecisionRow | None:
    """Return the decision a person (or the expiry) took on a revision, if any."""
    return session.execute(
        select(DecisionRow).where(DecisionRow.plan_id == plan_id, DecisionRow.stage == "human")
    ).scalar_one_or_none()


def release_reviewed(
    session: Session,
    message: ReviewDecided,
    signing: Signing,
    check: ApproverCheck,
) -> list[Envelope] | Reject:
    """Sign the person's approval that `message` names, if the hold allows it.

    A message that names no stored approval by a person changes nothing: the refusal is
    audited in this transaction and returned, for the caller to dead-letter once it commits.
    """
    plan = session.get(PlanRow, message.plan_id)
    if plan is None or plan.goal_id != message.goal_id or plan.plan_hash != message.plan_hash:
        return Reject(f"review.decided names plan {message.plan_id!r}, which is not in the store")
    decided = person_decision(session, plan.plan_id)
    if decided is None or decided.action != "approve":
        refusal = "no approval by a person is recorded for this revision"
        return Reject(_refused(session, plan, refusal))
    return release(session, plan, decided, signing, check)


def release(
    session: Session,
    plan: PlanRevision,
    decided: DecisionRow,
    signing: Signing,
    check: ApproverCheck,
) -> list[Envelope]:
    """Sign (or say again) the release of a person's approval, checked against the hold."""
    decision = decision_of(decided)
    if approval_issued(session, plan.plan_id):  # a redelivery: the same one, again
        return [
            follow_decision(session, plan, decision, signing.signer, signing.ttl, move_goal=False)
        ]
    goal = session.get_one(GoalRow, plan.goal_id)
    newest = latest_plan(session, goal.id)
    if goal.status != "approved" or newest is None or newest.plan_id != plan.plan_id:
        # Cancelled, or moved on meanwhile: there is nothing left to release.
        _refused(session, plan, f"the goal is {goal.status}, no longer waiting for its release")
        return []
    try:
        hold = hold_of(session, plan.plan_id)
        if hold is not None:  # what it asks is as the gate wrote it
            check_sealed(hold, plan, signing.hold_keys)
        check_open(hold, plan.plan_id, decided.created_at)
        # Counted again, each approver checked again: who they are, their roles, the bars.
        approvers = checked_approvers(session, plan, hold, check)
        if decided.decided_by not in approvers:  # the decision names who released it
            raise Forbidden(f"{decided.decided_by}'s approval does not count", "")
    except TooFewApprovers as refusal:
        for row in refusal.refused:  # its reviewer (the real one, if forged) may approve anew
            session.delete(row)
        return _withdraw(session, plan, decided, str(refusal))
    except (Forbidden, Conflict) as refusal:
        return _withdraw(session, plan, decided, str(refusal))
    envelope = follow_decision(
        session,
        plan,
        decision,
        signing.signer,
        signing.ttl,
        move_goal=False,
        approvers=approvers,
    )
    # What the gate itself checked and signed, named so that an auditor need not trust
    # the approvals handed in before it (a forged one is recorded too, then refused).
    signed = {
        "plan_id": plan.plan_id,
        "plan_hash": plan.plan_hash,
        "approval_id": session.scalar(
            select(ApprovalRow.approval_id).where(ApprovalRow.plan_id == plan.plan_id)
        ),
        "decided_by": decided.decided_by,
        "approvers": approvers,
        "key_id": signing.signer.key_id,
    }
    audit.append(session, "approval.signed", actor=ACTOR, goal_id=plan.goal_id, data=signed)
    _name_in_span(plan.goal_id, signed)
    return [envelope]


def _name_in_span(goal_id: str, signed: dict[str, Any]) -> None:
    """Say on the gate's span (`process review.decided`) what it checked and signed.

    As `decide` says a policy's decision: the approvers counted, the approval and its key.
    """
    span = trace.get_current_span()
    span.set_attribute("plangate.goal_id", goal_id)
    span.set_attribute("plangate.plan_id", signed["plan_id"])
    span.set_attribute("plangate.plan_hash", signed["plan_hash"])
    span.set_attribute("plangate.decision.action", "approve")
    span.set_attribute("plangate.decision.decided_by", signed["decided_by"])
    span.set_attribute("plangate.approvers", list(signed["approvers"]))
    span.set_attribute("plangate.approval_id", signed["approval_id"] or "")
    span.set_attribute("plangate.key_id", signed["key_id"])


def _withdraw(
    session: Session, plan: PlanRevision, decided: DecisionRow, reason: str
) -> list[Envelope]:
    """Refuse a person's approval the hold does not allow: the plan waits for a person again."""
    log.warning(
        "refused the approval of plan %s by %s: %s", plan.plan_id, decided.decided_by, reason
    )
    session.delete(decided)  # the revision's slot for a person's decision is free again
    transition(
        session,
        plan.goal_id,
        "held",
        by="gate",
        actor=ACTOR,
        reason=f"the approval by {decided.decided_by} was refused: {reason}",
        data={"plan_id": plan.plan_id, "decided_by": decided.decided_by},
    )
    return []


def _refused(session: Session, plan: PlanRevision, reason: str) -> str:
    audit.append(
        session,
        "review.refused",
        actor=ACTOR,
        goal_id=plan.goal_id,
        data={"plan_id": plan.plan_id, "reason": reason},
    )
    return f"plan {plan.plan_id}: {reason}"
