"""A person's decision as a span of the goal's trace, linked to the request it came in.

A person may decide hours later, in another process (`serve`, the CLI): the span continues
the goal's trace from its stored headers, and links to the request's own trace, if any.
An edit is one too: it showed only as a bare `publish plan.proposed`, naming no editor. So is
a settle of a step of unknown outcome: the goal's trace showed only the `publish plan.approved`
that resumed its run, naming no one and no step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span

from plangate.goal_trace import person_span
from plangate.store import GoalRow, PlanRow


@contextmanager
def review_span(
    goal: GoalRow, plan: PlanRow, action: str, reviewer: str, comment: str = ""
) -> Iterator[Span]:
    """Open the `review decision` span of `reviewer`'s `action` on `plan`, current inside."""
    with person_span(
        "review decision", goal.trace_headers, goal.id, action, reviewer, comment
    ) as span:
        span.set_attribute("plangate.plan_id", plan.plan_id)
        span.set_attribute("plangate.plan_hash", plan.plan_hash)
        yield span


@contextmanager
def settle_span(
    goal: GoalRow, plan_id: str, step_id: str, reviewer: str, happened: bool, comment: str = ""
) -> Iterator[Span]:
    """Open the `settle step` span of `reviewer` settling `step_id`, current inside."""
    with person_span(
        "settle step", goal.trace_headers, goal.id, "settle", reviewer, comment
    ) as span:
        span.set_attribute("plangate.plan_id", plan_id)
        span.set_attribute("plangate.step_id", step_id)
        span.set_attribute("plangate.settle.happened", happened)
        yield span
