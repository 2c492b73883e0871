"""A person's decision as a span of the goal's trace, linked to the request it came in.

A person may decide hours later, in another process (`serve`, the CLI): the span continues
the goal's trace from its stored headers, and links to the request's own trace, if any.
An edit is one too: it showed only as a bare `publish plan.proposed`, naming no editor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span

from plangate.goal_trace import goal_span
from plangate.store import GoalRow, PlanRow


@contextmanager
def review_span(goal: GoalRow, plan: PlanRow, action: str, reviewer: str) -> Iterator[Span]:
    """Open the `review decision` span of `reviewer`'s `action` on `plan`, current inside."""
    asked = trace.get_current_span().get_span_context()
    links = [Link(asked)] if asked.is_valid else None
    with goal_span(
        "review decision", goal.trace_headers, {"goal_id": goal.id}, links=links
    ) as span:
        span.set_attribute("plangate.decision.action", action)
        span.set_attribute("plangate.decision.decided_by", reviewer)
        span.set_attribute("plangate.plan_hash", plan.plan_hash)
        yield span
