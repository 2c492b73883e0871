"""A person's refused decision, kept in the audit log: a review's, a cancel's, a retry's.

The documentation says every refusal is an audit entry, but a decision refused for a role the
reviewer lacks, their own goal, or a goal no longer in a state to take it left no trace: a
compliance reader saw only the decisions that counted. A cancel refused for the role its
goal's hold asks was not recorded, where the same person's refused approval was. The refusal
is written in a transaction of its own, since the decision's rolls back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from plangate.errors import Conflict, Forbidden
from plangate.person_words import scrubbed
from plangate.store import GoalRow, PlanRow, Store, audit
from plangate.store.goals import by_id, latest_plan

log = logging.getLogger(__name__)

# Finds what a refusal is filed under: (goal id, plan id or None), or None for no such goal.
Subject = Callable[[Session], tuple[str, str | None] | None]

# What one person's refusals may add to the log, in this process. A reviewer without the role
# sent refused cancels at 300 a second, each an entry of 12 KB (2,000 characters a JSON escape
# each): 50 MB in 13 s, and the goal's page showed only those. Past the bound a refusal is
# still refused, and counted in the log's warning instead of written one by one.
RECORDED_PER_WINDOW = 30
WINDOW_SECONDS = 300.0
COMMENT_KEPT = 500  # characters of what they said: a refusal's record, not their essay


class _Budget:
    """How many refusals each person has had recorded lately, and how many went unrecorded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._recorded: dict[str, deque[float]] = {}
        self._unrecorded: dict[str, int] = {}

    def take(self, store: str, who: str) -> bool:
        """Return True if `who`'s refusal may be recorded in `store` now; else count it."""
        now = self._clock()
        key = f"{store} {who}"  # a process with two stores (a test suite's) counts each apart
        with self._lock:
            times = self._recorded.setdefault(key, deque())
            while times and times[0] <= now - WINDOW_SECONDS:
                times.popleft()
            if len(times) < RECORDED_PER_WINDOW:
                times.append(now)
                self._unrecorded.pop(key, None)  # a later burst is said again
                if len(self._recorded) > 10_000:  # forget the people who went quiet
                    for quiet in [
                        k
                        for k, t in self._recorded.items()
                        if not t or t[-1] <= now - WINDOW_SECONDS
                    ]:
                        del self._recorded[quiet]
                        self._unrecorded.pop(quiet, None)
                return True
            unrecorded = self._unrecorded[key] = self._unrecorded.get(key, 0) + 1
        if unrecorded == 1 or unrecorded % 1000 == 0:
            log.warning(
                "%s had %d decisions refused in %d s, the most recorded one by one: %d more "
                "refused and not written to the audit log (someone trying again and again?)",
                who,
                RECORDED_PER_WINDOW,
                WINDOW_SECONDS,
                unrecorded,
            )
        return False


_budget = _Budget()


def of_plan(plan_id: str) -> Subject:
    """File a refusal under the plan `plan_id` names (whole or its start), and its goal."""

    def find(session: Session) -> tuple[str, str | None] | None:
        plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)
        return None if plan is None else (plan.goal_id, plan.plan_id)

    return find


def of_goal(goal_id: str) -> Subject:
    """File a refusal under the goal `goal_id` names (whole or its start), and its newest plan."""

    def find(session: Session) -> tuple[str, str | None] | None:
        goal = by_id(session, GoalRow, GoalRow.id, goal_id, typed=True)
        if goal is None:
            return None
        plan = latest_plan(session, goal.id)  # whose hold a cancel is refused for
        return goal.id, None if plan is None else plan.plan_id

    return find


@contextmanager
def refusal_audited(
    store: Store, who: str, action: str, subject: Subject, comment: str = ""
) -> Iterator[None]:
    """Let a person's decision run; if it is refused, audit who tried what and why, then raise.

    Refused: a role they lack, their own goal (Forbidden), and a plan or goal no longer in a
    state to take it (decided, replaced, cancelled, expired, ended: Conflict). The last were
    left out as races; but a person without the role who came second was then told only that
    the plan was decided, and the log kept no trace of the attempt.
    """
    try:
        yield
    except (Forbidden, Conflict) as refused:
        _record(store, who, action, str(refused), subject, scrubbed(comment))
        raise


def _record(
    store: Store, who: str, action: str, reason: str, subject: Subject, comment: str
) -> None:
    try:
        with store.session() as session:
            found = subject(session)
            # Counted once it has a goal to be filed under: refusals of ids that name nothing
            # must not spend the budget, leaving the next on a real goal unrecorded.
            if found is None or not _budget.take(str(store.engine.url), who):
                return
            goal_id, plan_id = found
            data = {"action": action, "reason": reason}
            if comment:  # what they said they did it for, as a decision that counts keeps
                data["comment"] = comment[:COMMENT_KEPT] + (
                    "…" if len(comment) > COMMENT_KEPT else ""
                )
            if plan_id is not None:
                data = {"plan_id": plan_id, **data}
            audit.append(session, "review.refused", actor=who, goal_id=goal_id, data=data)
    except Exception:  # the refusal is the answer; a store failing now must not replace it
        log.warning("could not audit %s's refused %s: %s", who, action, reason, exc_info=True)
