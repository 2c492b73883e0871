"""Expiry: a plan held for a person longer than its TTL expires, and never runs.

The TTL is the holding rule's `hold_ttl_seconds`, else `PLANGATE_HOLD_TTL_SECONDS` (a day). An
expiry takes the revision's slot for a person's decision (decided by `gate`), so an approval
racing it loses, or wins and the expiry is skipped: never both. Calling this again, from any
number of workers, expires nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.decisions import record_decision
from approval_gate.policy import Policy
from plangate.bus import Envelope
from plangate.errors import Conflict
from plangate.store import DecisionRow, GoalRow, PlanRow, Store
from plangate.store.goals import latest_plan, transition
from plangate.store.outbox import emit
from schemas import Decision, PlanDecided

log = logging.getLogger(__name__)
DEFAULT_HOLD_TTL = timedelta(days=1)


def hold_ttl(
    decision: DecisionRow | None, policy: Policy | None, default: timedelta = DEFAULT_HOLD_TTL
) -> timedelta:
    """Return how long a plan held by `decision` waits for a person before it expires."""
    rule = policy.rule(decision.rule) if policy and decision else None
    if rule is not None and rule.hold_ttl_seconds is not None:
        return timedelta(seconds=rule.hold_ttl_seconds)
    return default


def expires_at(
    decision: DecisionRow, policy: Policy | None, default: timedelta = DEFAULT_HOLD_TTL
) -> datetime:
    """Return when a plan held by `decision` expires."""
    return decision.created_at + hold_ttl(decision, policy, default)


def expire_held(
    store: Store,
    now: datetime,
    *,
    policy: Policy | None = None,
    default_ttl: timedelta = DEFAULT_HOLD_TTL,
) -> list[Envelope]:
    """Expire every held plan whose TTL has passed by `now`; return the plan.expired envelopes."""
    with store.session() as session:
        held = session.execute(select(GoalRow.id).where(GoalRow.status == "held")).scalars().all()
    envelopes: list[Envelope] = []
    for goal_id in held:
        try:
            with store.session() as session:
                envelope = _expire_if_due(session, goal_id, now, policy, default_ttl)
        except Conflict:  # a person decided it meanwhile: theirs stands
            continue
        if envelope is not None:
            envelopes.append(envelope)
    return envelopes


def _expire_if_due(
    session: Session, goal_id: str, now: datetime, policy: Policy | None, default: timedelta
) -> Envelope | None:
    goal = session.get(GoalRow, goal_id)
    plan = latest_plan(session, goal_id)
    if goal is None or goal.status != "held" or plan is None:
        return None
    held_by = _policy_decision(session, plan)
    if held_by is None:
        return None
    ttl = hold_ttl(held_by, policy, default)
    if now < held_by.created_at + ttl:
        return None
    decision = Decision(
        action="expire",
        decided_by="gate",
        rule=held_by.rule,
        reason=f"held for a person longer than its TTL of {int(ttl.total_seconds())} s; expired",
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
    transition(session, goal_id, "expired", actor="gate", reason=decision.reason, data=data)
    log.info("plan %s of goal %s expired after %s", plan.plan_id, goal_id, ttl)
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
