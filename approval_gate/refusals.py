"""A reviewer's refused decision on a plan, kept in the audit log (`plangate.refusals`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from plangate import refusals
from plangate.store import Store

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def refusal_audited(
    store: Store, plan_id: str, reviewer: str, action: str, comment: str = ""
) -> Iterator[None]:
    """Let a decision on the plan `plan_id` run; if it is refused, audit it, then raise it."""
    subject = refusals.of_plan(plan_id)
    with refusals.refusal_audited(store, reviewer, action, subject, comment):
        yield


def audits_refusals(action: str) -> Callable[[F], F]:
    """Have a Review's decision `(self, plan_id, reviewer, ...)` audit its refusals."""

    def wrap(decide: F) -> F:
        signature = inspect.signature(decide)

        @functools.wraps(decide)
        def audited(self: Any, plan_id: str, reviewer: str, *args: Any, **kwargs: Any) -> Any:
            # What they said, kept with the refusal as with a decision that counts.
            given = signature.bind_partial(self, plan_id, reviewer, *args, **kwargs).arguments
            comment = given.get("comment")
            said = comment if isinstance(comment, str) else ""
            with refusal_audited(self._store, plan_id, reviewer, action, said):
                return decide(self, plan_id, reviewer, *args, **kwargs)

        return cast(F, audited)

    return wrap
