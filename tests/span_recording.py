"""Spans a test records in memory, from a processor detached once the test is done.

The SDK's provider cannot remove a span processor: one shut down at a test's end stayed on it,
and every span ended after wrote "Processor is already shutdown" to stderr, once per test that
had recorded spans before in the same worker. A test that dead-letters 300 messages (a span
each) then ran past its bound. This processor forwards only while its test records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plangate import telemetry


class _WhileRecording(SpanProcessor):
    """Hands spans to `inner` until `detach`; a no-op after, however many spans end."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner: SpanProcessor | None = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self._inner is not None:
            self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self._inner is not None:
            self._inner.on_end(span)

    def detach(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown()

    def shutdown(self) -> None:
        self.detach()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis) if self._inner is not None else True


@contextmanager
def recording_spans(processor: SpanProcessor | None = None) -> Iterator[InMemorySpanExporter]:
    """Record the spans ended inside the block (to `processor` too, if given)."""
    telemetry.setup_tracing()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    memory = _WhileRecording(SimpleSpanProcessor(exporter))
    provider.add_span_processor(memory)
    extra = _WhileRecording(processor) if processor is not None else None
    if extra is not None:
        provider.add_span_processor(extra)
    try:
        yield exporter
    finally:
        memory.detach()
        if extra is not None:
            extra.detach()
