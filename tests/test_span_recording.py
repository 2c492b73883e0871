"""Spans are recorded only where a processor receives them; the trace context always flows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan

from plangate import telemetry
from plangate.span_recording import PassingTracer, ReceivingProvider


def tracer_of(provider: ReceivingProvider) -> PassingTracer:
    return PassingTracer(provider.get_tracer("test"), lambda: provider)


def test_with_no_processor_a_goals_first_span_still_starts_a_trace() -> None:
    """Given a provider no processor receives spans from,
    When a span with no parent starts (a goal's first),
    Then it has a trace id of its own, sampled, which its headers carry on.
    """
    tracer = tracer_of(ReceivingProvider())

    with tracer.start_as_current_span("submit") as root:
        headers = telemetry.current_headers()

    context = root.get_span_context()
    assert context.is_valid
    assert context.trace_flags.sampled
    assert telemetry.trace_id_of(headers) == format(context.trace_id, "032x")


def test_with_no_processor_a_span_under_a_parent_passes_the_parents_context_on() -> None:
    """Given a provider no processor receives spans from, and a message's trace headers,
    When a stage opens its spans under them and publishes,
    Then nothing is recorded, and the published headers are the ones it received: the same
    trace, the same parent and the same sampled flag for whoever exports further on.
    """
    tracer = tracer_of(ReceivingProvider())
    with tracer.start_as_current_span("submit"):
        incoming = telemetry.current_headers()

    token = otel_context.attach(telemetry.extract(incoming))
    try:
        with (
            tracer.start_as_current_span("process goal.submitted") as consumer,
            tracer.start_as_current_span("plan") as inner,
        ):
            outgoing = telemetry.current_headers()
    finally:
        otel_context.detach(token)

    assert isinstance(consumer, NonRecordingSpan)
    assert isinstance(inner, NonRecordingSpan)
    assert outgoing == incoming


def test_once_a_processor_is_added_every_span_is_recorded_under_its_parent() -> None:
    """Given a provider that had no processor,
    When one is added (an exporter, or a test's in-memory one) and a parent and child start,
    Then both are recorded, the child under the parent in the same trace.
    """
    provider = ReceivingProvider()
    tracer = tracer_of(provider)
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))

    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child"):
        pass

    child, parent = exported.get_finished_spans()
    assert (child.name, parent.name) == ("child", "parent")
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


def test_a_provider_installed_by_the_application_records_every_span() -> None:
    """Given a provider that is not plangate's (an application's own, any processors),
    When plangate's tracer starts a span under a parent,
    Then the SDK records it as the application set it up: plangate decides nothing there.
    """
    provider = TracerProvider()
    tracer = PassingTracer(provider.get_tracer("test"), lambda: provider)

    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child") as child:
        assert child.is_recording()


def test_an_error_in_a_span_that_is_not_recorded_still_raises() -> None:
    """Given a provider no processor receives spans from,
    When the block of a span under a parent raises,
    Then the error reaches the caller unchanged.
    """
    tracer = tracer_of(ReceivingProvider())
    with (
        tracer.start_as_current_span("parent"),
        pytest.raises(ValueError, match="boom"),
        tracer.start_as_current_span("child"),
    ):
        raise ValueError("boom")
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_process_with_no_otel_variables_passes_context_on_until_a_processor_is_added() -> None:
    """Given a fresh process with no OTEL_* variables, set up as every plangate process is,
    When a goal's first span starts, a stage's span starts under its headers, and then a
    processor is added and another starts,
    Then the first has a trace id, the second passes the same headers on unrecorded, and the
    third is recorded as a new span of the same trace.
    """
    script = """
from opentelemetry import context, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from plangate import telemetry
telemetry.setup_tracing()
with telemetry.tracer().start_as_current_span("submit goal"):
    incoming = telemetry.current_headers()
token = context.attach(telemetry.extract(incoming))
with telemetry.tracer().start_as_current_span("plan") as span:
    passed = telemetry.current_headers()
    print(span.is_recording(), passed == incoming)
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
with telemetry.tracer().start_as_current_span("decide") as span:
    recorded = telemetry.current_headers()
    print(span.is_recording(), recorded != incoming)
context.detach(token)
(decide,) = memory.get_finished_spans()
print(telemetry.trace_id_of(incoming) == format(decide.context.trace_id, "032x"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True", "True"]
