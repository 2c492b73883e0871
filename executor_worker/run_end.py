"""How a run ends: the goal moved on by its steps' outcomes, and the message that tells it.

A run whose goal was cancelled meanwhile ends with `execution.cancelled`: an operator's
decision, which no stage takes for a failure (nothing plans it again).

A run that already ended is told again, unchanged, to a redelivered approval (`outcome_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from executor_worker.engine import StepOutcome
from plangate.bus import Envelope
from plangate.store import TERMINAL_STATUSES, AuditRow, StepRunRow
from plangate.store.goals import GoalState, transition
from plangate.store.outbox import emit
from plangate.unknown_calls import SINCE_LISTED, settle_command
from schemas import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionPaused,
    Message,
)

ACTOR = "executor"


def end_run(
    session: Session,
    goal_id: str,
    plan_id: str,
    goal: GoalState,
    outcomes: Mapping[str, StepOutcome],
) -> list[Envelope]:
    """Move the goal on by its run's outcomes (locked `goal`); return the message to publish."""
    statuses = {step_id: o.status for step_id, o in outcomes.items()}
    troubled = [o for o in outcomes.values() if o.status in ("failed", "unknown")]
    if goal.status in TERMINAL_STATUSES:  # a concurrent delivery of it finished first
        outcome = outcome_of(session, goal_id, goal.status, goal.status_reason, plan_id)
        return [emit(session, outcome)]
    if not troubled:
        transition(
            session,
            goal_id,
            "completed",
            by="executor",
            actor=ACTOR,
            data={"steps": statuses},
            current=goal.status,
        )
        return [emit(session, ExecutionCompleted(goal_id=goal_id, plan_id=plan_id, steps=statuses))]
    unknown = [o for o in troubled if o.status == "unknown"]
    if unknown and goal.status == "needs_attention":
        # Paused already: this end again, after a commit whose answer the connection lost
        # (`riding_out_outages`); its message is in the outbox, for the relay.
        return []
    if unknown:
        # Even beside a failure: a write that may have happened needs a person before
        # the goal may end (or be planned again). Resumed, a recorded failure stands.
        return [emit(session, _pause(session, goal_id, plan_id, unknown))]
    first = next(o for o in troubled if o.status == "failed")
    reason = f"step {first.step_id!r} {first.status}: {first.error}"
    transition(
        session,
        goal_id,
        "failed",
        by="executor",
        actor=ACTOR,
        reason=reason,
        data={"steps": statuses},
    )
    failed = ExecutionFailed(goal_id=goal_id, plan_id=plan_id, reason=reason, steps=statuses)
    return [emit(session, failed)]


def _pause(
    session: Session, goal_id: str, plan_id: str, unknown: Sequence[StepOutcome]
) -> ExecutionPaused:
    """Stop the run for a person: each unknown step must be settled before it goes on."""
    names = ", ".join(repr(o.step_id) for o in unknown)
    # The first one's cause, in its own words: the tool's (a timeout after sending), or that
    # the executor calling it died.
    why = f"{unknown[0].error}; " if unknown[0].error else ""
    rows = list(session.execute(select(StepRunRow).where(StepRunRow.plan_id == plan_id)).scalars())
    # The command names the call unknown now (its since): a settle names the call it settles.
    one = unknown[0].step_id if len(unknown) == 1 else None
    since = next((row.finished_at for row in rows if row.step_id == one), None)
    listed = "" if since else f"; {SINCE_LISTED}"
    reason = (
        f"step {names} may or may not have happened ({why}its tool is not idempotent, so "
        f"nothing calls it again by itself); check, then "
        f"`{settle_command(plan_id, one or 'STEP', since)}` or `--not-happened` "
        f"(it then runs again{listed})"
    )
    statuses: dict[str, Any] = {row.step_id: row.status for row in rows}
    transition(session, goal_id, "needs_attention", by="executor", actor=ACTOR, reason=reason)
    return ExecutionPaused(goal_id=goal_id, plan_id=plan_id, reason=reason, steps=statuses)


def outcome_of(
    session: Session, goal_id: str, status: str, reason: str | None, plan_id: str
) -> Message:
    """Rebuild the outcome message of a goal whose run already ended."""
    rows = session.execute(select(StepRunRow).where(StepRunRow.plan_id == plan_id)).scalars()
    # A step still claimed (a late run elsewhere) has no outcome to tell yet.
    steps: dict[str, Any] = {row.step_id: row.status for row in rows if row.status != "running"}
    if status == "completed":
        return ExecutionCompleted(goal_id=goal_id, plan_id=plan_id, steps=steps)
    reason = reason or f"the goal is {status}"
    if status == "cancelled":  # an operator's decision: told as such, not as a failure
        who = _canceller(session, goal_id)
        return ExecutionCancelled(
            goal_id=goal_id, plan_id=plan_id, reason=reason, cancelled_by=who, steps=steps
        )
    return ExecutionFailed(goal_id=goal_id, plan_id=plan_id, reason=reason, steps=steps)


def _canceller(session: Session, goal_id: str) -> str | None:
    """Return who cancelled the goal, as its audit log records the move."""
    return session.execute(
        select(AuditRow.actor)
        .where(AuditRow.goal_id == goal_id, AuditRow.kind == "goal.cancelled")
        .order_by(AuditRow.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
