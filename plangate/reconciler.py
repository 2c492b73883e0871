"""The reconciler: no goal depends on the broker keeping a message.

A goal left in a non-terminal state past its deadline gets its last message published again;
idempotent handlers answer it with what they already did, or do what was lost. A held goal
waits for a person and is left alone; a running goal whose steps still hold a live lease is
being worked on and is left alone too.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.bus import Envelope
from plangate.store import ApprovalRow, GoalRow, StepRunRow, Store
from plangate.store.goals import latest_plan, plan_of
from plangate.store.outbox import emit
from schemas import GoalSubmitted, PlanApproved, PlanProposed, SignedEnvelope, utcnow

log = logging.getLogger(__name__)

STALLED_STATUSES = ("submitted", "proposed", "approved", "running")


def reconcile(store: Store, after: timedelta, limit: int = 100) -> list[Envelope]:
    """Queue the last message of every goal stalled past its deadline; return the envelopes.

    A goal's deadline is `after` since it last moved, then twice that after each resend (up to
    64x): a goal that is merely queued behind a backlog must not be resent into the backlog
    again and again, which would only make the backlog grow.
    """
    now = utcnow()
    envelopes: list[Envelope] = []
    with store.session() as session:
        candidates = session.execute(
            select(GoalRow)
            .where(GoalRow.status.in_(STALLED_STATUSES), GoalRow.updated_at < now - after)
            .order_by(GoalRow.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
        for goal in candidates:
            if goal.updated_at > now - after * 2 ** min(goal.reconciled, 6):
                continue
            if goal.planning_until is not None and goal.planning_until > now:
                continue  # a planner is on it (a slow LLM): resending would pay for it twice
            envelope = _last_message(session, goal)
            goal.updated_at = now
            goal.reconciled += 1
            if envelope is not None:
                log.warning(
                    "goal %s stalled while %s; sending its last message again", goal.id, goal.status
                )
                envelopes.append(envelope)
    return envelopes


def _last_message(session: Session, goal: GoalRow) -> Envelope | None:
    if goal.status == "submitted":
        message = GoalSubmitted(
            goal_id=goal.id,
            text=goal.text,
            metadata={str(k): str(v) for k, v in goal.meta.items()},
            idempotency_key=goal.idempotency_key,
        )
        return emit(session, message, trace_headers=goal.trace_headers)
    plan = latest_plan(session, goal.id)
    if plan is None:
        return None
    if goal.status == "proposed":
        proposal = PlanProposed(
            goal_id=goal.id, plan=plan_of(plan), plan_hash=plan.plan_hash, planner=plan.planner
        )
        return emit(session, proposal, trace_headers=goal.trace_headers)
    if _steps_still_leased(session, plan.plan_id):
        return None
    approval = session.execute(
        select(ApprovalRow).where(ApprovalRow.plan_id == plan.plan_id)
    ).scalar_one_or_none()
    if approval is None:
        return None
    released = PlanApproved(
        goal_id=goal.id,
        plan=plan_of(plan),
        approval=SignedEnvelope.model_validate(approval.envelope),
    )
    return emit(session, released, trace_headers=goal.trace_headers)


def _steps_still_leased(session: Session, plan_id: str) -> bool:
    now = utcnow()
    leases = session.execute(
        select(StepRunRow.lease_until).where(
            StepRunRow.plan_id == plan_id, StepRunRow.status == "running"
        )
    ).scalars()
    return any(lease is not None and lease > now for lease in leases)
