"""A span in a goal's trace, opened away from the message that carried the goal.

A person's decision (in `serve` or the CLI, maybe hours later), a hold's expiry (a sweep) and
a dead letter (a message no handler took) each continue the goal's trace from the headers it
stored or carried, and the log lines written meanwhile name the goal: done here, once, so the
three read alike in Jaeger and in the logs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

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
