"""What a write of unknown outcome was called with: its arguments and its idempotency key.

A person settling such a write asks the other system whether it happened (did payment X go
out?), and the other system knows the call by its key and its arguments. The executor that
called it died with them in memory, so they are made again as it made them: the plan's
arguments with its references filled from the outputs recorded, and the key of the goal, the
step and those arguments. The step's `step.unknown` and `step.settled` entries record them, as
a finished step's entry does, and `plangate review unsettled` shows them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from executor_worker.engine import idempotency_key
from executor_worker.step_entries import called_with
from plangate.store import StepRunRow
from schemas import Plan
from schemas.references import UnresolvedReference, resolve


def call_of(session: Session, plan: Plan, step_id: str) -> dict[str, Any]:
    """Return what a write step of `plan` is called with: `args` (or `args_sha256`) and its key.

    Empty if the plan has no such step, or an output its arguments read is not recorded (the
    run would have failed the step before calling it).
    """
    try:
        step = plan.step(step_id)
    except KeyError:
        return {}
    recorded = session.execute(
        select(StepRunRow.step_id, StepRunRow.output).where(
            StepRunRow.plan_id == plan.plan_id, StepRunRow.status == "succeeded"
        )
    )
    outputs = {step_id: output for step_id, output in recorded}
    try:
        args = resolve(dict(step.args), outputs)
    except UnresolvedReference:
        return {}
    return called_with(args, idempotency_key(plan.goal_id, step, args))
