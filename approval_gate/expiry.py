"""Expiry: a plan held for a person longer than its TTL expires, and never runs.

When it expires was fixed by the gate when it held the plan (the hold record: the holding
rule's `hold_ttl_seconds`, else `PLANGATE_HOLD_TTL_SECONDS`, a day); a policy edited since
changes nothing. A plan held before holds were recorded expires after the default TTL. An
expiry takes the revision's slot for a person's decision (decided by `gate`), so an approval
racing it loses, or wins and the expiry is skipped: never both. Calling this again, from any
number of workers, expires nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.decisions import record_decision
from approval_gate.holds import DEFAULT_HOLD_TTL, hold_of, legacy_expiry
from plangate import metrics
from plangate.bus import Envelope
from plangate.errors import Conflict
from plangate.goal_trace import goal_span
from plangate.store import DecisionRow, GoalRow, PlanRow, Store
from plangate.store.goals import goal_status, latest_plan, transition
from plangate.store.outbox import emit
from schemas import Decision, PlanDecided

log = logging.getLogger(__name__)


def expires_at(
    session: Session, decision: DecisionRow, default: timedelta = DEFAULT_HOLD_TTL
) -> datetime:
    """Return when the plan held by `decision` expires: as its hold says, else the default."""
    hold = hold_of(session, decision.plan_id)
    return hold.expires_at if hold is not None else legacy_expiry(decision, default)


def expire_held(
    store: Store,
    now: datetime,
    *,
    default_ttl: timedelta = DEFAULT_HOLD_TTL,
    goal_ids: Collection[str] | None = None,
) -> list[Envelope]:
    """Expire every held plan (of `goal_ids`, if given) whose TTL has passed by `now`.

    Returns the plan.expired envelopes.
    """
    query = select(GoalRow.id).where(GoalRow.status == "held")
    if goal_ids is not None:
        query = query.where(GoalRow.id.in_(list(goal_ids)))
    with store.reading() as session:  # each is expired in a writing transaction of its own
        held = session.execute(query).scalars().all()
    envelopes: list[Envelope] = []
    for goal_id in held:
        try:
            with store.session() as session:
                envelope = _expire_if_due(session, goal_id, now, default_ttl)
        except Conflict:  # a person decided it meanwhile: theirs stands
            continue
        if envelope is not None:
            envelopes.append(envelope)
    return envelopes


def _expire_if_due(
    session: Session, goal_id: str, now: datetime, default: timedelta
) -> Envelope | None:
    # Locked first, as a person's decision locks it: each waited on the other's decision row
    # (inserted before the goal was locked here), and PostgreSQL broke the deadlock by failing
    # the person's approval.
    locked = goal_status(session, goal_id, lock=True)
    plan = latest_plan(session, goal_id)
    if locked is None or locked.status != "held" or plan is None:
        return None
    goal = session.get_one(GoalRow, goal_id)
    held_by = _policy_decision(session, plan)
    if held_by is None:
        return None
    due = expires_at(session, held_by, default)
    if now < due:
        return None
    ttl = due - held_by.created_at
    seconds = int(ttl.total_seconds())
    # In the goal's trace, its lines naming the goal: a sweep runs outside any message.
    with goal_span("expire hold", goal.trace_headers, {"goal_id": goal_id}) as span:
        span.set_attribute("plangate.plan_hash", plan.plan_hash)
        decision = Decision(
            action="expire",
            decided_by="gate",
            rule=held_by.rule,
            reason=f"held for a person longer than its TTL of {seconds} s; expired",
            policy_version=held_by.policy_version,
        )
        record_decision(session, plan, "human", decision)
        data = {
            "plan_id": plan.plan_id,
            "revision": plan.revision,
            "plan_hash": plan.plan_hash,
            "decided_by": "gate",
            "rule": held_by.rule,
            "policy_version": held_by.policy_version,
        }
        transition(
            session,
            goal_id,
            "expired",
            by="gate",
            actor="gate",
            reason=decision.reason,
            data=data,
            current=locked.status,
        )
        log.info("plan %s of goal %s expired after %s", plan.plan_id, goal_id, ttl)
        metrics.APPROVALS_EXPIRED.inc()
        return emit(
            session,
            PlanDecided(
                type="plan.expired",
                goal_id=goal_id,
                plan_id=plan.plan_id,
                revision=plan.revision,
                plan_hash=plan.plan_hash,
                decision=decision,
            ),
            trace_headers=goal.trace_headers,
        )


def _policy_decision(session: Session, plan: PlanRow) -> DecisionRow | None:
    return session.execute(
        select(DecisionRow).where(
            DecisionRow.plan_id == plan.plan_id, DecisionRow.stage == "policy"
        )
    ).scalar_one_or_none()
