"""The planner stage's handler: goal.submitted in; plan.proposed or plan.failed out.

Idempotent on redelivery: a goal that already has a plan (or a failure) gets the same answer
again instead of a second plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from plangate import telemetry
from plangate.bus import Delivery, Envelope
from plangate.catalog import load_catalog
from plangate.errors import PlanningFailed, Reject
from plangate.store import PlanRow, Store
from plangate.store.goals import ensure_goal, latest_plan, plan_of, transition
from plangate.store.outbox import emit
from planner_worker.planner import Planner
from schemas import (
    GoalSubmitted,
    Message,
    Plan,
    PlanFailed,
    PlanInvalid,
    PlanProposed,
    new_id,
    plan_hash,
    validate_plan,
)

ACTOR = "planner"


class PlannerHandler:
    """Turns each goal into one validated plan revision, or a failure that says why."""

    def __init__(self, store: Store, planner: Planner) -> None:
        self._store = store
        self._planner = planner

    def __call__(self, message: Message, delivery: Delivery) -> Sequence[Envelope]:
        """Handle one goal.submitted message."""
        if not isinstance(message, GoalSubmitted):
            raise Reject(f"the planner does not handle {type(message).__name__}")
        with self._store.session() as session:
            goal = ensure_goal(session, message, delivery.headers)
            existing = latest_plan(session, message.goal_id)
            if existing is not None:
                return [emit(session, _proposal(existing))]
            if goal.status == "plan_failed":
                reasons = [goal.status_reason or "planning failed"]
                return [emit(session, PlanFailed(goal_id=message.goal_id, reasons=reasons))]
        with telemetry.tracer().start_as_current_span("plan") as span:
            span.set_attribute("gen_ai.operation.name", "plan")
            span.set_attribute("plangate.goal_id", message.goal_id)
            try:
                plan, planner_name = self._make_plan(message)
            except PlanningFailed as failure:
                span.set_attribute("error.type", "planning_failed")
                return self._fail(message, failure.reasons)
            # Inside the span: the gate and executor continue the trace under `plan`.
            return self._propose(plan, planner_name)

    def _make_plan(self, goal: GoalSubmitted) -> tuple[Plan, str]:
        catalog = load_catalog(self._store)
        if not catalog:
            raise PlanningFailed(
                ["no executor has published its tools yet; start an executor, then resubmit"]
            )
        draft = self._planner.draft(goal, catalog)
        plan = Plan(
            plan_id=new_id(),
            goal_id=goal.goal_id,
            revision=1,
            summary=draft.summary,
            steps=draft.steps,
        )
        try:
            validate_plan(plan, catalog)
        except PlanInvalid as invalid:
            raise PlanningFailed([str(p) for p in invalid.problems]) from invalid
        return plan, draft.planner

    def _propose(self, plan: Plan, planner_name: str) -> Sequence[Envelope]:
        digest = plan_hash(plan)
        with self._store.session() as session:
            row = PlanRow(
                plan_id=plan.plan_id,
                goal_id=plan.goal_id,
                revision=plan.revision,
                body=plan.model_dump(mode="json"),
                plan_hash=digest,
                planner=planner_name,
            )
            session.add(row)
            session.flush()
            transition(
                session,
                plan.goal_id,
                "proposed",
                actor=ACTOR,
                data={"plan_id": plan.plan_id, "revision": 1, "plan_hash": digest},
            )
            return [emit(session, _proposal(row))]

    def _fail(self, goal: GoalSubmitted, reasons: list[str]) -> Sequence[Envelope]:
        with self._store.session() as session:
            transition(session, goal.goal_id, "plan_failed", actor=ACTOR, reason="; ".join(reasons))
            return [emit(session, PlanFailed(goal_id=goal.goal_id, reasons=reasons))]


def _proposal(row: PlanRow) -> PlanProposed:
    return PlanProposed(
        goal_id=row.goal_id, plan=plan_of(row), plan_hash=row.plan_hash, planner=row.planner
    )
