"""Cancelling a goal: an operator's decision that nothing more of it runs.

A goal that has not ended may be cancelled: held, approved, running, waiting for a person or
still being planned, and a rejected or failed one that could still be planned again. The
gate no longer decides it, an approval on its way finds it ended, and a run starts no further
step (steps already running finish and are recorded). The move is the state machine's
`cancelled`, audited with who and why: its `goal.cancelled` entry records the plan it ended
(the latest, if any), the state it ended in (`from_state`), the canceller's own words
(`comment`; `reason` says "cancelled by WHO: ..."), and their roles.

Cancelling a goal whose plan a rule held for a role decides it as rejecting would: it asks
for that role too (a reviewer without it, refused a reject, could cancel instead).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.errors import Conflict, Forbidden
from plangate.goal_trace import person_span
from plangate.person_words import recorded_words
from plangate.store import GoalRow, HoldRow, Store
from plangate.store.goals import get_goal, goal_status, latest_plan, transition
from schemas.goal_states import cancellable


def cancel_goal(
    store: Store, goal_id: str, who: str, reason: str, roles: frozenset[str] = frozenset()
) -> None:
    """Cancel a goal that has not ended, as `who` (with `roles`), saying why.

    Conflict if it has ended; Forbidden if its plan was held for a role `who` lacks.
    """
    reason = recorded_words(reason, "the reason")
    with store.session() as session:
        goal = get_goal(session, goal_id, typed=True)  # NotFound; a short id names the whole one
        goal_id = goal.id
        status = session.execute(
            select(GoalRow.status).where(GoalRow.id == goal_id).with_for_update()
        ).scalar_one()
        if not cancellable(status):
            raise Conflict(f"goal {goal_id} is {status}: it has ended, nothing to cancel")
        check_role(session, goal_id, who, roles, "cancelling it decides it")
        why = f"cancelled by {who}: {reason}" if reason else f"cancelled by {who}"
        # Recorded as a decision is: the plan it ended (latest, if any), the state it ended in,
        # what they wrote apart from the move's own words, and the roles they acted with.
        plan = latest_plan(session, goal_id)
        data = {
            "plan_id": plan.plan_id if plan is not None else None,
            "from_state": status,
            "comment": reason,
            "roles": sorted(roles),
        }
        # In the goal's trace, as a review is: its move's log line names the goal's trace.
        with person_span("cancel goal", goal.trace_headers, goal_id, "cancel", who, reason):
            transition(
                session, goal_id, "cancelled", by="operator", actor=who, reason=why, data=data
            )


def check_role(
    session: Session, goal_id: str, who: str, roles: frozenset[str], because: str
) -> None:
    """Raise Forbidden if the goal's newest plan was held for a role `who` lacks.

    `because` says why steering the goal is deciding it (a cancel, a retry).
    """
    plan = latest_plan(session, goal_id)
    hold = session.get(HoldRow, plan.plan_id) if plan is not None else None
    missing = sorted(set(hold.required_roles or []) - roles) if hold is not None else []
    if hold is not None and missing:
        needed = ", ".join(repr(role) for role in missing)
        raise Forbidden(
            f"rule {hold.rule!r} requires the role {needed} to decide goal {goal_id}, and "
            f"{because}; {who} does not have it: ask a reviewer who does",
            missing[0],
        )


def is_cancelled(store: Store, goal_id: str) -> bool:
    """Return whether the goal was cancelled (a run asks before the steps it starts)."""
    with store.reading() as session:
        return cancelled_in(session, goal_id)


def cancelled_in(session: Session, goal_id: str) -> bool:
    """Return whether the goal was cancelled, as the session's transaction sees it."""
    found = goal_status(session, goal_id)
    return found is not None and found.status == "cancelled"
