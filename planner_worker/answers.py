"""What the planner stores and says: a proposed revision or a failure, and each said again.

A redelivered goal or piece of feedback already answered gets the stored answer again
(`proposal_of`, `failure_of`), never a second revision.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from plangate import telemetry
from plangate.bus import Envelope
from plangate.redaction import redact
from plangate.store import PlanRow
from plangate.store.goals import plan_of, plan_values, transition
from plangate.store.outbox import emit
from plangate.store.rows import insert_row
from planner_worker.planner import Draft
from schemas import Plan, PlanFailed, PlanProposed
from schemas.decoding import storable_text
from schemas.messages import TokenUsage

ACTOR = "planner"


def store_proposal(session: Session, plan: Plan, draft: Draft) -> list[Envelope]:
    """Store a new revision, move its goal to `proposed`, and emit plan.proposed."""
    usage = draft.usage
    row = plan_values(
        plan,
        draft.planner,
        # The `plan` span, so that the run of this plan can link to it later (where the
        # planner records no span, the span its goal came in with).
        telemetry.current_headers(),
        model=draft.model,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
    )
    insert_row(session, PlanRow, row)
    moved = {"plan_id": plan.plan_id, "revision": plan.revision, "plan_hash": row["plan_hash"]}
    transition(session, plan.goal_id, "proposed", by="planner", actor=ACTOR, data=moved)
    proposed = PlanProposed(
        goal_id=plan.goal_id,
        plan=plan,
        plan_hash=row["plan_hash"],
        planner=draft.planner,
        model=draft.model,
        usage=usage,
    )
    return [emit(session, proposed)]


def store_failure(session: Session, goal_id: str, reasons: list[str]) -> list[Envelope]:
    """Move the goal to `plan_failed` with its reasons, and emit plan.failed."""
    # Reasons quote model servers, which may echo a secret: redacted before the bus sees them.
    reasons = [storable_text(redact(reason)) for reason in reasons]
    transition(
        session, goal_id, "plan_failed", by="planner", actor=ACTOR, reason="; ".join(reasons)
    )
    return [emit(session, PlanFailed(goal_id=goal_id, reasons=reasons))]


def proposal_of(row: PlanRow) -> PlanProposed:
    """Return the plan.proposed of a stored revision (a redelivery's answer)."""
    usage = None
    if row.input_tokens is not None or row.output_tokens is not None:
        usage = TokenUsage(input_tokens=row.input_tokens or 0, output_tokens=row.output_tokens or 0)
    return PlanProposed(
        goal_id=row.goal_id,
        plan=plan_of(row),
        plan_hash=row.plan_hash,
        planner=row.planner,
        model=row.model,
        usage=usage,
    )


def failure_of(goal_id: str, reason: str | None) -> PlanFailed:
    """Return the plan.failed of a goal whose planning failed (a redelivery's answer)."""
    return PlanFailed(goal_id=goal_id, reasons=[reason or "planning failed"])
