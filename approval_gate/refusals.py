"""A reviewer's refused decision on a plan, kept in the audit log (`plangate.refusals`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from plangate import refusals
from plangate.store import Store

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def refusal_audited(store: Store, plan_id: str, reviewer: str, action: str) -> Iterator[None]:
    """Let a decision on the plan `plan_id` run; if it is refused, audit it, then raise it."""
    with refusals.refusal_audited(store, reviewer, action, refusals.of_plan(plan_id)):
        yield


def audits_refusals(action: str) -> Callable[[F], F]:
    """Have a Review's decision `(self, plan_id, reviewer, ...)` audit its refusals."""

    def wrap(decide: F) -> F:
        @functools.wraps(decide)
        def audited(self: Any, plan_id: str, reviewer: str, *args: Any, **kwargs: Any) -> Any:
            with refusal_audited(self._store, plan_id, reviewer, action):
                return decide(self, plan_id, reviewer, *args, **kwargs)

        return cast(F, audited)

    return wrap
