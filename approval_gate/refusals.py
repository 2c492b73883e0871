"""A reviewer's refused decision, kept in the audit log.

The gate documents that every refusal is an audit entry, but a decision refused for a role the
reviewer lacks, a submitter approving their own goal, or a second approval by the same person
left no trace: a compliance reader saw only the decisions that counted. The refusal is written
in a transaction of its own, since the decision's rolls back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from plangate.errors import Forbidden
from plangate.store import PlanRow, Store, audit

F = TypeVar("F", bound=Callable[..., Any])


def audits_refusals(action: str) -> Callable[[F], F]:
    """Have a decision `(self, plan_id, reviewer, ...)` audit who tried what, when Forbidden.

    `self` is a Review: its `_store` takes the entry.
    """

    def wrap(decide: F) -> F:
        @functools.wraps(decide)
        def audited(self: Any, plan_id: str, reviewer: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return decide(self, plan_id, reviewer, *args, **kwargs)
            except Forbidden as refused:
                _record(self._store, plan_id, reviewer, action, str(refused))
                raise

        return cast(F, audited)

    return wrap


def _record(store: Store, plan_id: str, reviewer: str, action: str, reason: str) -> None:
    with store.session() as session:
        plan = session.get(PlanRow, plan_id)
        if plan is None:  # no plan, no goal to file it under (a NotFound came first)
            return
        data = {"plan_id": plan_id, "action": action, "reason": reason}
        audit.append(session, "review.refused", actor=reviewer, goal_id=plan.goal_id, data=data)
