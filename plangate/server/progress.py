"""Where a plan stands, read from the store, for the review page after a decision.

The page never says what a decision should have led to; it says what the store holds now:
approved by whom, running, completed with each step's result, or refused and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from plangate.errors import NotFound, quoted
from plangate.store import DecisionRow, GoalRow, PlanRow, ReviewerApprovalRow, StepRunRow, Store
from plangate.store.goals import latest_plan
from plangate.store.plan_decided import decided_of, decisions_of

MAX_SHOWN = 2000  # characters of one output or error; the API and `plangate status` have all


@dataclass(frozen=True)
class StepResult:
    """One step of the plan as the executors recorded it (`pending` if none did yet)."""

    step_id: str
    tool: str
    status: str
    output: str | None
    error: str | None


@dataclass(frozen=True)
class PlanProgress:
    """A plan revision's goal now: its state, who decided, why, and each step's result."""

    plan_id: str
    goal_id: str
    revision: int
    status: str
    reason: str | None
    updated_at: datetime
    headline: str
    newest_plan_id: str
    steps: list[StepResult]

    @property
    def replaced(self) -> bool:
        """Whether a newer revision replaced this one."""
        return self.newest_plan_id != self.plan_id

    @property
    def ran(self) -> bool:
        """Whether any step has a result to show."""
        return any(step.status != "pending" for step in self.steps)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN]}… (cut here: {len(text)} characters in all)"


def _by(decision: DecisionRow | None, approvers: list[str]) -> str:
    if decision is None:
        return ""
    if decision.stage == "policy":
        return f"rule {decision.rule}" if decision.rule else "the policy"
    if decision.action == "approve" and len(approvers) > 1:
        return ", ".join(approvers)  # four eyes: the last one alone hid the others
    return decision.decided_by


def _headline(
    status: str, human: DecisionRow | None, policy: DecisionRow | None, approvers: list[str]
) -> str:
    decided = human if human is not None else policy
    by = f" by {_by(decided, approvers)}" if decided is not None else ""
    approved_by = f", approved{by}" if decided and decided.action == "approve" else ""
    lines = {
        "submitted": "Submitted: waiting for a planner.",
        "proposed": "Proposed: the policy is deciding this revision; reload to see its decision.",
        "held": "Held: waiting for a reviewer's decision.",
        "approved": f"Approved{by}: the gate signs it and releases it to an executor.",
        "running": f"Running{approved_by}.",
        "needs_attention": "Stopped: a step may or may not have happened; settle it on the "
        "list of held plans.",
        "completed": f"Completed{approved_by}.",
        "failed": f"Failed{approved_by}.",
        "plan_failed": "Planning failed: no valid plan was made.",
        "denied": f"Denied{by}: it will not run.",
        "rejected": f"Rejected{by}: it will not run.",
        "expired": "Expired: nobody decided in time; it will not run.",
    }
    return lines.get(status, f"The goal is {status}.")


def _by_whom(session: Any, plan: PlanRow, decisions: dict[str, DecisionRow]) -> str:
    """Say who replaced a revision and why (an edit and its comment), as the API does."""
    human = decisions.get("human")
    if human is None:
        return ""
    decided = decided_of(session, plan, human)
    verb = {"edit": "edited", "reject": "rejected", "expire": "expired"}.get(decided.action)
    said = f"{verb or decided.action} by {decided.decided_by}"
    return f" ({said}: {decided.comment})" if decided.comment else f" ({said})"


def plan_progress(store: Store, plan_id: str) -> PlanProgress:
    """Return where the plan `plan_id` and its goal stand now (NotFound if there is no plan)."""
    with store.snapshot() as session:
        plan = session.get(PlanRow, plan_id)
        if plan is None:
            raise NotFound(f"no plan {quoted(plan_id)}; the list of held plans links to each")
        goal = session.get_one(GoalRow, plan.goal_id)
        newest = latest_plan(session, goal.id) or plan
        decisions = decisions_of(session, plan_id)
        approvers = list(
            session.scalars(
                select(ReviewerApprovalRow.reviewer)
                .where(ReviewerApprovalRow.plan_id == plan_id)
                .order_by(ReviewerApprovalRow.created_at, ReviewerApprovalRow.reviewer)
            )
        )
        runs = {
            row.step_id: row
            for row in session.execute(
                select(StepRunRow).where(StepRunRow.plan_id == plan_id)
            ).scalars()
        }
        steps = []
        for step in plan.body.get("steps", []):
            run = runs.get(str(step["id"]))
            steps.append(
                StepResult(
                    step_id=str(step["id"]),
                    tool=str(step["tool"]),
                    status=run.status if run else "pending",
                    output=_shown(run.output) if run and run.output is not None else None,
                    error=_shown(run.error) if run and run.error else None,
                )
            )
        status = goal.status if newest.plan_id == plan_id else "replaced"
        if status == "replaced":
            by_whom = _by_whom(session, plan, decisions)
            headline = f"Replaced by revision {newest.revision}{by_whom}."
        else:
            headline = _headline(status, decisions.get("human"), decisions.get("policy"), approvers)
        return PlanProgress(
            plan_id=plan_id,
            goal_id=goal.id,
            revision=plan.revision,
            status=status,
            reason=goal.status_reason,
            updated_at=goal.updated_at,
            headline=headline,
            newest_plan_id=newest.plan_id,
            steps=steps,
        )
