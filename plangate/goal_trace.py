"""A span in a goal's trace, opened away from the message that carried the goal.

A person's decision (in `serve` or the CLI, maybe hours later), a hold's expiry (a sweep) and
a dead letter (a message no handler took) each continue the goal's trace from the headers it
stored or carried, and the log lines written meanwhile name the goal: done here, once, so the
three read alike in Jaeger and in the logs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span

from plangate import logs, telemetry


@contextmanager
def goal_span(
    name: str,
    trace_headers: Mapping[str, str],
    log_fields: Mapping[str, str],
    *,
    links: Sequence[Link] | None = None,
) -> Iterator[Span]:
    """Open `name` under the trace in `trace_headers`, current inside, with `log_fields` bound.

    The log lines' trace id is the span's own (`plangate.logs`), so a search by trace finds
    them beside the span.
    """
    context = telemetry.extract(trace_headers)
    with (
        telemetry.tracer().start_as_current_span(name, context=context, links=links) as span,
        logs.bound(**log_fields),
    ):
        yield span


@contextmanager
def person_span(
    name: str,
    trace_headers: Mapping[str, str],
    goal_id: str,
    action: str,
    who: str,
    reason: str = "",
) -> Iterator[Span]:
    """Open `who`'s `action` on a goal as `name` in its trace, linked to the current span.

    A review, a cancel or a retry comes in a request (serve's, or none in the CLI): the span is
    the goal's, and its link leads to the request's own trace. The move logged inside it
    names the goal's trace, not the request's.
    """
    asked = trace.get_current_span().get_span_context()
    links = [Link(asked)] if asked.is_valid else None
    with goal_span(name, trace_headers, {"goal_id": goal_id}, links=links) as span:
        span.set_attribute("plangate.goal_id", goal_id)
        span.set_attribute("plangate.decision.action", action)
        span.set_attribute("plangate.decision.decided_by", who)
        if reason:
            span.set_attribute("plangate.decision.reason", reason)
        yield span
