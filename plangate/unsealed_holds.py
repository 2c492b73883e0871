"""Held plans no approval can release since revision 0014: their holds carry no seal.

A gate of a release at 0013 or older held them; the gate now signs no approval of an unsealed
hold (`approval_gate.holds.release_bar`). `plangate db upgrade` counts them once it has
migrated, and says the way out, which `release_bar` says of each.
"""

from __future__ import annotations

from sqlalchemy import select

from plangate.store import GoalRow, HoldRow, Store
from plangate.store.goals import latest_plan

WAY_OUT = (
    "edit it with the same plan (`plangate review edit PLAN --file plan.json`: a new "
    "revision, which the gate holds and seals), or reject it and submit the goal again (not "
    "for senders using an idempotency key: their retry answers the rejected goal)"
)


def unsealed_held(store: Store) -> list[str]:
    """Return the plan ids of the held goals whose newest revision's hold carries no seal."""
    with store.session() as session:
        held = session.scalars(select(GoalRow.id).where(GoalRow.status == "held")).all()
        barred = []
        for goal_id in held:
            plan = latest_plan(session, goal_id)
            hold = session.get(HoldRow, plan.plan_id) if plan is not None else None
            if plan is not None and hold is not None and hold.seal is None:
                barred.append(plan.plan_id)
        return barred
