"""Writes a cancelled goal's run left in flight: the process calling them ended mid-call.

A cancelled goal starts no further step and its run is never resumed, so no executor comes
back to a write that was being called when its process ended (killed, or `plangate run`
ending after Ctrl-C without waiting for it): the claim showed `running` for ever, and no one
was asked whether the write happened. Such a write is marked `unknown`, as the next run marks
one of a goal that goes on, and `plangate review settle` records what a person found (the
goal stays cancelled). Only writes take a claim before their call, so only writes are found.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from executor_worker.step_entries import ended_entry
from plangate.step_calls import call_of
from plangate.store import GoalRow, PlanRow, StepRunRow, Store, audit
from plangate.store.goals import plan_of
from schemas import utcnow

ABANDONED = (
    "the process calling it ended mid-call after the goal was cancelled: it may or may not "
    "have happened; check, then record which with `plangate review settle`"
)


def mark_abandoned(
    store: Store, *, goal_id: str | None = None, limit: int = 100, why: str = ABANDONED
) -> list[str]:
    """Mark cancelled goals' writes left running as `unknown`; return `plan_id/step_id` of each.

    Without `goal_id`: those whose claim's lease has run out (the executor calling it would
    have recorded its end by then, or its lease says it is still calling). With `goal_id`: that
    goal's, at once, by the process about to end without waiting for them, or by one that knows
    the process calling them has ended (`plangate.run_marks`). `why` is recorded as the error.
    """
    now = utcnow()
    with store.session() as session:
        query = (
            select(StepRunRow)
            .join(GoalRow, GoalRow.id == StepRunRow.goal_id)
            .where(StepRunRow.status == "running", GoalRow.status == "cancelled")
            .order_by(StepRunRow.started_at)
            .limit(limit)
            .with_for_update(of=StepRunRow, skip_locked=True)
        )
        if goal_id is None:
            query = query.where(StepRunRow.lease_until < now)
        else:
            query = query.where(StepRunRow.goal_id == goal_id)
        marked = []
        for row in session.scalars(query):
            row.status, row.error, row.finished_at = "unknown", why, now
            key: dict[str, Any] = {"plan_id": row.plan_id, "step_id": row.step_id}
            key["tool"] = row.tool
            plan = plan_of(session.get_one(PlanRow, row.plan_id))
            key.update(call_of(session, plan, row.step_id, row.idempotency_key))  # asked about
            entry = ended_entry(key, None, row.error)
            audit.append(session, "step.unknown", actor="executor", goal_id=row.goal_id, data=entry)
            marked.append(f"{row.plan_id}/{row.step_id}")
        return marked
