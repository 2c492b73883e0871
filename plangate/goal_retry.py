"""Retrying a goal: an operator sends a failed, expired or unplannable goal back to the start.

Never around the planner and the gate: the goal goes back to `submitted` (the state machine's
operator move, audited with who and why) and its `goal.submitted` is sent again. The planner,
finding a goal submitted that already has plans, makes the next revision afresh; the gate
decides that new plan under today's policy, and no earlier approval can run it (approvals
name their plan). Steps already run belong to the old revision and are not run again by it.
"""

from __future__ import annotations

from sqlalchemy import select

from plangate.bus import Envelope
from plangate.cancellation import check_role
from plangate.errors import Conflict
from plangate.goal_trace import person_span
from plangate.person_words import recorded_words
from plangate.store import GoalRow, Store
from plangate.store.goals import get_goal, transition
from plangate.store.outbox import emit
from schemas import GoalSubmitted
from schemas.goal_states import TRANSITIONS

RETRYABLE = frozenset(
    s for s, moves in TRANSITIONS.items() if "operator" in moves.get("submitted", ())
)


def retry_goal(
    store: Store, goal_id: str, who: str, reason: str, roles: frozenset[str] = frozenset()
) -> Envelope:
    """Send a failed, expired or unplannable goal back to the planner; return its message.

    Conflict if the goal is in any other state (running, held, completed, ...); Forbidden if
    its newest plan was held for a role `who` (with `roles`) lacks: reviving a plan the role's
    reviewers let lapse is theirs to do, as cancelling it is.
    """
    reason = recorded_words(reason, "the reason")
    with store.session() as session:
        goal_id = get_goal(
            session, goal_id, typed=True
        ).id  # NotFound; a short id names the whole one
        goal = session.execute(
            select(GoalRow).where(GoalRow.id == goal_id).with_for_update()
        ).scalar_one()
        if goal.status not in RETRYABLE:
            raise Conflict(
                f"goal {goal_id} is {goal.status}; only a goal that is "
                f"{', '.join(sorted(RETRYABLE))} can be retried"
            )
        check_role(session, goal_id, who, roles, "retrying it brings it back for them")
        why = f"retried by {who}: {reason}" if reason else f"retried by {who}"
        previous = goal.status
        # In the goal's trace, as a review is; the goal.submitted it sends carries this span,
        # so the new revision's planning reads under the retry.
        with person_span("retry goal", goal.trace_headers, goal_id, "retry", who, reason):
            transition(
                session,
                goal_id,
                "submitted",
                by="operator",
                actor=who,
                reason=why,
                data={"retried_from": previous},
            )
            message = GoalSubmitted(goal_id=goal.id, text=goal.text, metadata=dict(goal.meta))
            return emit(session, message)
