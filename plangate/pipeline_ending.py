"""Ending an embedded pipeline early (an exception, Ctrl-C): its goals cancelled, a bounded wait.

`plangate run` after Ctrl-C cancels its goal, gives the steps already running a grace to end and
then ends without them. A library's `with Pipeline(...)` block that raised did none of it: it
waited for a 20 s tool to end, and let the goal run on to completion meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

from sqlalchemy import select

from plangate.cancellation import cancel_goal
from plangate.errors import Conflict, Forbidden
from plangate.store import TERMINAL_STATUSES, GoalRow, Store

# After Ctrl-C (or an exception), how long steps already running get to end before the
# process (`plangate run`) or the `with` block (`Pipeline`) ends without them.
STOP_GRACE_SECONDS = 5.0
# Who cancels a pipeline's goals as its block ends early, in the audit log.
WHO = "pipeline"
_CHUNK = 500  # ids per query: a library's pipeline may have run thousands of goals


def unended(store: Store, goal_ids: Collection[str]) -> list[str]:
    """Return those of `goal_ids` that have not ended."""
    ids = sorted(goal_ids)
    found: list[str] = []
    with store.reading() as session:
        for start in range(0, len(ids), _CHUNK):
            found += session.scalars(
                select(GoalRow.id).where(
                    GoalRow.id.in_(ids[start : start + _CHUNK]),
                    GoalRow.status.not_in(TERMINAL_STATUSES),
                )
            ).all()
    return found


def cancel_unended(store: Store, goal_ids: Collection[str], reason: str) -> list[str]:
    """Cancel those of `goal_ids` that have not ended, so no further step of them starts.

    Return the ids cancelled. A goal that ended meanwhile is left as it ended; a plan held for
    a role stays held (nothing runs without a decision).
    """
    cancelled = []
    for goal_id in unended(store, goal_ids):
        with contextlib.suppress(Conflict, Forbidden):
            cancel_goal(store, goal_id, WHO, reason)
            cancelled.append(goal_id)
    return cancelled
