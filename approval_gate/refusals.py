"""A reviewer's refused decision, kept in the audit log.

The gate documents that every refusal is an audit entry, but a decision refused for a role the
reviewer lacks, a submitter approving their own goal, or a second approval by the same person
left no trace: a compliance reader saw only the decisions that counted. The refusal is written
in a transaction of its own, since the decision's rolls back.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from plangate.errors import Conflict, Forbidden
from plangate.store import PlanRow, Store, audit
from plangate.store.goals import by_id

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


@contextmanager
def refusal_audited(store: Store, plan_id: str, reviewer: str, action: str) -> Iterator[None]:
    """Let a decision run; if it is refused, audit who tried what and why, then raise it.

    Refused: a role they lack, their own goal (Forbidden), their second approval, and a plan
    no longer waiting for them (decided, replaced, cancelled or expired: Conflict). The last
    were left out as races; but a person without the role who came second was then told only
    that the plan was decided, and the log kept no trace of the attempt.
    """
    try:
        yield
    except (Forbidden, Conflict) as refused:
        _record(store, plan_id, reviewer, action, str(refused))
        raise


def audits_refusals(action: str) -> Callable[[F], F]:
    """Have a Review's decision `(self, plan_id, reviewer, ...)` audit its refusals."""

    def wrap(decide: F) -> F:
        @functools.wraps(decide)
        def audited(self: Any, plan_id: str, reviewer: str, *args: Any, **kwargs: Any) -> Any:
            with refusal_audited(self._store, plan_id, reviewer, action):
                return decide(self, plan_id, reviewer, *args, **kwargs)

        return cast(F, audited)

    return wrap


def _record(store: Store, plan_id: str, reviewer: str, action: str, reason: str) -> None:
    try:
        with store.session() as session:
            plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)  # or its start
            if plan is None:  # no plan, no goal to file it under
                return
            data = {"plan_id": plan.plan_id, "action": action, "reason": reason}
            audit.append(session, "review.refused", actor=reviewer, goal_id=plan.goal_id, data=data)
    except Exception:  # the refusal is the answer; a store failing now must not replace it
        log.warning(
            "could not audit %s's refused %s of plan %s", reviewer, action, plan_id, exc_info=True
        )
