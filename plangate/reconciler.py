"""The reconciler: no goal depends on the broker keeping a message.

A goal left in a non-terminal state past its deadline gets its last message published again;
idempotent handlers answer it with what they already did, or do what was lost. A held goal
waits for a person and is left alone. A running goal is left alone while a step holds a live
claim, and, since reads take no claim, until a step lease has passed since its run last showed
life (it started, or a step started or finished): a dead executor's run is taken over then,
as a dead executor's write is.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.bus import Envelope
from plangate.store import ApprovalRow, DecisionRow, GoalRow, PlanRow, StepRunRow, Store
from plangate.store.goals import latest_plan, plan_of
from plangate.store.outbox import emit
from schemas import (
    GoalSubmitted,
    PlanApproved,
    PlanProposed,
    ReviewDecided,
    SignedEnvelope,
    utcnow,
)

log = logging.getLogger(__name__)

STALLED_STATUSES = ("submitted", "proposed", "approved", "running")


def reconcile(
    store: Store,
    after: timedelta,
    limit: int = 100,
    step_lease: timedelta = timedelta(minutes=5),
) -> list[Envelope]:
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
            envelope = _last_message(session, goal, step_lease)
            goal.updated_at = now
            goal.reconciled += 1
            if envelope is not None:
                log.warning(
                    "goal %s stalled while %s; sending its last message again", goal.id, goal.status
                )
                envelopes.append(envelope)
    return envelopes


def _last_message(session: Session, goal: GoalRow, step_lease: timedelta) -> Envelope | None:
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
    if _run_in_progress(session, goal, plan.plan_id, step_lease):
        return None
    approval = session.execute(
        select(ApprovalRow).where(ApprovalRow.plan_id == plan.plan_id)
    ).scalar_one_or_none()
    if approval is None:
        return _unsigned_review(session, goal, plan)
    released = PlanApproved(
        goal_id=goal.id,
        plan=plan_of(plan),
        approval=SignedEnvelope.model_validate(approval.envelope),
    )
    return emit(session, released, trace_headers=goal.trace_headers)


def _unsigned_review(session: Session, goal: GoalRow, plan: PlanRow) -> Envelope | None:
    """Hand a person's approval that no gate has signed yet to the gate again."""
    decided = session.execute(
        select(DecisionRow).where(
            DecisionRow.plan_id == plan.plan_id,
            DecisionRow.stage == "human",
            DecisionRow.action == "approve",
        )
    ).scalar_one_or_none()
    if goal.status != "approved" or decided is None:
        return None
    message = ReviewDecided(
        goal_id=goal.id,
        plan_id=plan.plan_id,
        revision=plan.revision,
        plan_hash=plan.plan_hash,
        decided_by=decided.decided_by,
    )
    return emit(session, message, trace_headers=goal.trace_headers)


def _run_in_progress(session: Session, goal: GoalRow, plan_id: str, step_lease: timedelta) -> bool:
    """Return True while a step holds a live claim, or a running goal's run showed life lately."""
    now = utcnow()
    steps = session.execute(
        select(
            StepRunRow.status, StepRunRow.lease_until, StepRunRow.started_at, StepRunRow.finished_at
        ).where(StepRunRow.plan_id == plan_id)
    ).all()
    if any(s.status == "running" and s.lease_until and s.lease_until > now for s in steps):
        return True
    if goal.status != "running":
        return False
    # A read in flight leaves no row: the run's last sign of life stands in for its lease.
    signs = [goal.updated_at, *(s.started_at for s in steps), *(s.finished_at for s in steps)]
    return bool(max(sign for sign in signs if sign is not None) > now - step_lease)
