"""Spans are recorded only where something receives them; trace context flows everywhere.

The SDK builds every span it starts (sampling, ids, bounded attributes, a readable copy at its
end) even when no processor is there to take it: in the embedded mode without an exporter that
was about a fifth of a goal's CPU, for spans nobody could see. A process whose provider has no
span processor now passes the trace context on instead: a span with a parent is that parent's
context, unchanged. So the goal's one trace id, and its sampled flag, still reach every message,
stored row and log line, and a process that does export places its spans in the same trace. A
span with no parent (a goal's first, a run started as a trace of its own) is still made by the
SDK: that is where a trace gets its id.

As soon as a processor is added (an exporter configured, or a test's in-memory one), every span
is recorded again. A provider installed by someone else is always used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
from opentelemetry.util import types


class ReceivingProvider(TracerProvider):
    """The SDK's provider, knowing whether any span processor receives its spans."""

    receives = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        """Add a processor (see the SDK); from now on every span is recorded."""
        super().add_span_processor(span_processor)
        self.receives = True


class PassingTracer(trace.Tracer):
    """Records spans through `recording` where they are received; elsewhere passes context on.

    `provider` returns the provider in use (the global one unless given).
    """

    def __init__(
        self,
        recording: trace.Tracer,
        provider: Callable[[], trace.TracerProvider] = trace.get_tracer_provider,
    ) -> None:
        self._recording = recording
        self._provider = provider

    def _unseen(self) -> bool:
        provider = self._provider()
        return isinstance(provider, ReceivingProvider) and not provider.receives

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: trace._Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        """Start a span (see the API), or return its parent's context where none receives it."""
        if self._unseen():
            parent = trace.get_current_span(context)
            if parent.get_span_context().is_valid:
                if isinstance(parent, NonRecordingSpan):
                    return parent
                return NonRecordingSpan(parent.get_span_context())
        return self._recording.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    # The API types it with a private context manager class of its own (as its ProxyTracer,
    # which ignores the same): a plain one is what plangate's `with` blocks use.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: trace._Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        """Start a span as `start_span` does, and make it current for the block."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
