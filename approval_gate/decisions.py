"""Recording a decision and producing what follows from it: one path for policy and people.

Every decision is a row (at most one by policy and one by a person per revision: the unique
constraint settles races), an audit entry, a goal state, and one outgoing message. An approve
decision also issues the signed, single-use approval that binds the plan's hash; only the gate
holds the key, so a person's approval is handed to it (`hand_to_gate`) to be checked and signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from plangate import metrics
from plangate.bus import Envelope
from plangate.errors import Conflict, Reject
from plangate.redaction import redact
from plangate.signing import Signer
from plangate.store import ApprovalRow, DecisionRow, PlanRow
from plangate.store.claims import insert_if_absent
from plangate.store.goals import plan_of, transition
from plangate.store.hot_statements import HotStatement
from plangate.store.models import GoalStatus
from plangate.store.outbox import emit
from plangate.store.plan_revision import PlanRevision
from plangate.store.rows import insert_row
from schemas import Decision, Plan, PlanApproved, PlanDecided, ReviewDecided, SignedEnvelope

_APPROVALS = cast(Table, ApprovalRow.__table__)
_ISSUED = HotStatement(
    select(_APPROVALS.c.approval_id, _APPROVALS.c.envelope).where(
        _APPROVALS.c.plan_id == bindparam("plan_id")
    )
)
_OUTCOMES: dict[str, tuple[str, GoalStatus]] = {
    "deny": ("plan.denied", "denied"),
    "hold": ("plan.held", "held"),
    "reject": ("plan.rejected", "rejected"),
    "expire": ("plan.expired", "expired"),
}


def record_decision(
    session: Session,
    plan: PlanRevision,
    stage: str,
    decision: Decision,
    roles: frozenset[str] | None = None,
    counted_as: str | None = None,
) -> None:
    """Store a decision (a person's with their roles); Conflict if this stage already decided.

    `counted_as` names its action in `plangate_decisions_total` where the record's differs:
    an edit is stored as the old revision's rejection, but it rejected nothing.
    """
    row = {
        "plan_id": plan.plan_id,
        "goal_id": plan.goal_id,
        "stage": stage,
        "roles": None if roles is None else sorted(roles),
        **decision.model_dump(),
        # Shown by `status` and the API: a secret a reviewer pasted was served back (the log
        # and the goal's own reason held it redacted).
        "reason": redact(decision.reason),
    }
    # The unique (plan, stage) settles a race between gates, or between people.
    if not insert_if_absent(session, DecisionRow, row):
        raise Conflict(
            f"revision {plan.revision} of plan {plan.plan_id} was already decided; reload it"
        )
    metrics.decided(counted_as or decision.action, decision.rule, decision.decided_by)


def decision_of(row: DecisionRow) -> Decision:
    """Return the Decision model of a stored decision."""
    return Decision.model_validate(row, from_attributes=True)


def hand_to_gate(
    session: Session,
    plan: PlanRevision,
    decision: Decision,
    trace_headers: Mapping[str, str] | None = None,
    roles: frozenset[str] | None = None,
) -> Envelope:
    """Move the goal to `approved` and ask the gate to sign a person's approval.

    The message carries the current trace, or `trace_headers` (a message sent again later).

    The store keeps the decision (with the reviewer's roles); the message only wakes a gate
    worker, which checks the decision against the hold and signs the approval.
    """
    reason = f"approved by {decision.decided_by}; the gate checks the hold and releases the plan"
    data = {
        "plan_id": plan.plan_id,
        "revision": plan.revision,
        "plan_hash": plan.plan_hash,
        "decided_by": decision.decided_by,
        "policy_version": decision.policy_version,
        "comment": decision.reason,  # what the reviewer wrote (the move's reason is ours)
        **person_recorded(roles),
    }
    transition(
        session,
        plan.goal_id,
        "approved",
        by="person",
        actor=decision.decided_by,
        reason=reason,
        data=data,
    )
    return emit(session, review_decided(plan, decision.decided_by), trace_headers=trace_headers)


def person_recorded(roles: frozenset[str] | None) -> dict[str, object]:
    """Return what a person's decision adds to its audit entry: their roles, as its row has."""
    return {} if roles is None else {"roles": sorted(roles)}


def review_decided(plan: PlanRevision, reviewer: str) -> ReviewDecided:
    """Return the message that hands a person's approval of `plan` to the gate."""
    return ReviewDecided(
        goal_id=plan.goal_id,
        plan_id=plan.plan_id,
        revision=plan.revision,
        plan_hash=plan.plan_hash,
        decided_by=reviewer,
    )


def follow_decision(
    session: Session,
    plan: PlanRevision,
    decision: Decision,
    signer: Signer | None,
    ttl: timedelta,
    *,
    move_goal: bool = True,
    approvers: Sequence[str] = (),
    proposed: Plan | None = None,
    recorded: Mapping[str, object] | None = None,
) -> Envelope:
    """Move the goal on and emit the decision's message (approve: with a signed approval).

    With `move_goal=False` (a redelivery of a decided plan) only the message is emitted again:
    the goal may have moved on since (running, completed) and must not be moved back.
    `proposed` is the plan itself when the caller holds it, its hash checked against the row's
    (not decoded from the row again, and hashed once). `recorded` is more for the move's
    audit entry: a person's roles, what a hold asks.
    """
    data = {
        "plan_id": plan.plan_id,
        "revision": plan.revision,
        "plan_hash": plan.plan_hash,
        "decided_by": decision.decided_by,
        "rule": decision.rule,
        "policy_version": decision.policy_version,
        **(recorded or {}),
    }
    if decision.action == "approve":
        if signer is None:  # only a gate worker holds the key: a person's approval goes there
            raise ValueError("an approval is signed by the gate; hand it over with hand_to_gate")
        body = proposed if proposed is not None else plan_of(session.get_one(PlanRow, plan.plan_id))
        approval_id, approval = _approval_for(session, plan, body, decision, signer, ttl, approvers)
        if move_goal:
            # The policy's approval has no `approval.signed` entry: this one links the decision
            # to the run, whose `goal.running` entry names the approval it checked.
            signed = {"approval_id": approval_id, "key_id": approval.signatures[0].keyid}
            transition(
                session,
                plan.goal_id,
                "approved",
                by="gate",
                actor=decision.decided_by,
                reason=decision.reason,
                data=data | signed,
            )
        return emit(session, PlanApproved(goal_id=plan.goal_id, plan=body, approval=approval))
    message_type, status = _OUTCOMES[decision.action]
    if move_goal:
        transition(
            session,
            plan.goal_id,
            status,
            by="person" if decision.action == "reject" else "gate",
            actor=decision.decided_by,
            reason=decision.reason,
            data=data,
        )
    return emit(
        session,
        PlanDecided(
            type=message_type,
            goal_id=plan.goal_id,
            plan_id=plan.plan_id,
            revision=plan.revision,
            plan_hash=plan.plan_hash,
            # Redacted as its row is: a rejection's comment is the planner's feedback, put in
            # a model's prompt by a process that knows no reviewer's token.
            decision=decision.model_copy(update={"reason": redact(decision.reason)}),
        ),
    )


def approval_issued(session: Session, plan_id: str) -> bool:
    """Return whether the gate has signed an approval of this revision."""
    return _ISSUED.first(session, {"plan_id": plan_id}) is not None


def _approval_for(
    session: Session,
    plan: PlanRevision,
    body: Plan,
    decision: Decision,
    signer: Signer,
    ttl: timedelta,
    approvers: Sequence[str],
) -> tuple[str, SignedEnvelope]:
    """Return the plan's approval (its id, its envelope), issuing and storing it the first time."""
    existing = _ISSUED.first(session, {"plan_id": plan.plan_id})
    if existing is not None:
        return str(existing[0]), SignedEnvelope.model_validate(existing[1])
    approval = signer.approval(body, decision, ttl, approvers)
    if approval.plan_hash != plan.plan_hash:  # the body read back is not what was decided on
        raise Reject(
            f"plan {plan.plan_id}: the stored plan no longer has the hash it was decided on; "
            "nothing is signed (has the database been written to by hand?)"
        )
    envelope = signer.sign(approval)
    row = {
        "approval_id": approval.approval_id,
        "plan_id": plan.plan_id,
        "goal_id": plan.goal_id,
        "plan_hash": plan.plan_hash,
        "envelope": envelope.model_dump(mode="json"),
        "expires_at": approval.expires_at,
    }
    insert_row(session, ApprovalRow, row)
    return approval.approval_id, envelope
