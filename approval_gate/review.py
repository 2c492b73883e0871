"""Human review: list what is held, approve or reject a revision, as a named reviewer.

A reviewer acts on the revision (and hash) they saw: if the plan changed since, or someone
else decided first, they get a Conflict, never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.decisions import follow_decision, record_decision
from plangate import telemetry
from plangate.bus import Envelope
from plangate.errors import Conflict, NotFound
from plangate.signing import Signer
from plangate.store import DecisionRow, GoalRow, PlanRow, Store
from plangate.store.goals import latest_plan
from schemas import Decision


@dataclass(frozen=True)
class HeldPlan:
    """A plan revision waiting for a person, with what the policy said of it."""

    plan: PlanRow
    goal: GoalRow
    policy_decision: DecisionRow | None


class Review:
    """Decisions by people on held plans, recorded and followed like policy decisions."""

    def __init__(self, store: Store, signer: Signer, ttl: timedelta) -> None:
        self._store = store
        self._signer = signer
        self._ttl = ttl

    def held(self) -> list[HeldPlan]:
        """Return every plan revision waiting for a person, oldest first."""
        with self._store.session() as session:
            goals = session.execute(
                select(GoalRow).where(GoalRow.status == "held").order_by(GoalRow.updated_at)
            ).scalars()
            return [self._held(session, goal) for goal in goals]

    def get(self, plan_id: str) -> HeldPlan:
        """Return one held plan by id (NotFound if unknown)."""
        with self._store.session() as session:
            plan = session.get(PlanRow, plan_id)
            if plan is None:
                raise NotFound(f"no plan {plan_id!r}; `plangate review list` shows held plans")
            return self._held(session, session.get_one(GoalRow, plan.goal_id))

    def approve(
        self, plan_id: str, reviewer: str, *, expected_hash: str | None = None, comment: str = ""
    ) -> Sequence[Envelope]:
        """Approve a held revision; return the envelopes to publish (plan.approved)."""
        return self._decide(plan_id, reviewer, "approve", comment or "approved", expected_hash)

    def reject(
        self, plan_id: str, reviewer: str, comment: str, *, expected_hash: str | None = None
    ) -> Sequence[Envelope]:
        """Reject a held revision with a comment; return the envelopes to publish."""
        return self._decide(plan_id, reviewer, "reject", comment or "rejected", expected_hash)

    def _held(self, session: Session, goal: GoalRow) -> HeldPlan:
        plan = latest_plan(session, goal.id)
        if plan is None:
            raise NotFound(f"goal {goal.id} has no plan")
        policy = session.execute(
            select(DecisionRow).where(
                DecisionRow.plan_id == plan.plan_id, DecisionRow.stage == "policy"
            )
        ).scalar_one_or_none()
        return HeldPlan(plan, goal, policy)

    def _decide(
        self, plan_id: str, reviewer: str, action: str, reason: str, expected_hash: str | None
    ) -> Sequence[Envelope]:
        with self._store.session() as session:
            held = self._held_for_decision(session, plan_id, expected_hash)
            policy_version = held.policy_decision.policy_version if held.policy_decision else ""
            decision = Decision(
                action=action,
                decided_by=reviewer,
                reason=reason,
                policy_version=policy_version,
            )
            # A person may decide hours later, in another process: continue the goal's trace.
            with telemetry.tracer().start_as_current_span(
                "review decision", context=telemetry.extract(held.goal.trace_headers)
            ) as span:
                span.set_attribute("plangate.decision.action", action)
                span.set_attribute("plangate.decision.decided_by", reviewer)
                span.set_attribute("plangate.plan_hash", held.plan.plan_hash)
                record_decision(session, held.plan, "human", decision)
                return [follow_decision(session, held.plan, decision, self._signer, self._ttl)]

    def _held_for_decision(
        self, session: Session, plan_id: str, expected_hash: str | None
    ) -> HeldPlan:
        plan = session.get(PlanRow, plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r}; `plangate review list` shows held plans")
        goal = session.get_one(GoalRow, plan.goal_id)
        newest = latest_plan(session, goal.id)
        if newest is not None and newest.plan_id != plan.plan_id:
            raise Conflict(
                f"plan {plan_id} is revision {plan.revision}, but revision {newest.revision} "
                "replaced it; review the newest revision"
            )
        if expected_hash is not None and expected_hash != plan.plan_hash:
            raise Conflict(f"plan {plan_id} changed since you loaded it; reload and review again")
        if goal.status != "held":
            raise Conflict(f"plan {plan_id} is not waiting for review (the goal is {goal.status})")
        return self._held(session, goal)
