"""Trace context: one trace per goal, carried in message headers (W3C `traceparent`).

The SDK's TracerProvider is installed even when nothing exports, so that trace ids exist from
the first message and appear in the CLI and logs; exporters are added from `OTEL_*` settings.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")


def setup_tracing() -> None:
    """Install an SDK TracerProvider unless the application already installed one."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


@functools.cache
def tracer() -> trace.Tracer:
    """Return plangate's tracer (a proxy: it follows a provider installed later)."""
    return trace.get_tracer("plangate")


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current trace context into message headers."""
    _propagator.inject(headers)


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """Read a trace context from message headers (an empty context if there is none)."""
    return _propagator.extract({k: v for k, v in headers.items() if k in TRACE_HEADERS})


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    """Return the 32-hex trace id carried by `headers`, if any."""
    span_context = trace.get_current_span(extract(headers)).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_trace_id() -> str | None:
    """Return the trace id of the current span, if it is valid."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextmanager
def producer_span(destination: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
    """Open a messaging producer span under the headers' context, and re-inject its context."""
    parent = extract(headers)
    with tracer().start_as_current_span(
        f"publish {destination}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kombu",
            "messaging.operation.type": "publish",
            "messaging.destination.name": destination,
        },
    ) as span:
        inject(headers)
        yield span


@contextmanager
def consumer_span(queue: str, routing_key: str, headers: Mapping[str, str]) -> Iterator[Span]:
    """Open a messaging consumer (process) span continuing the trace in `headers`."""
    token = otel_context.attach(extract(headers))
    try:
        with tracer().start_as_current_span(
            f"process {routing_key}",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kombu",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        ) as span:
            yield span
    finally:
        otel_context.detach(token)
