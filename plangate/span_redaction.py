"""A span as it leaves the process: its every text redacted (no secret is exported), printable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

from plangate.printable import printable
from plangate.redaction import redact
from schemas.decoding import storable_text


class RedactingExporter(SpanExporter):
    """Hands another exporter each span redacted: nothing secret leaves the process in a span."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export redacted copies of `spans`."""
        return self.inner.export([redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis)


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """Return a copy of `span` whose every text (name, attributes, events, status) is redacted."""
    status = span.status
    if status.description:
        status = Status(status.status_code, _text(status.description))
    return ReadableSpan(
        name=_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_attributes(span.attributes),
        events=[
            Event(_text(e.name), _attributes(e.attributes), timestamp=e.timestamp)
            for e in span.events
        ],
        links=[Link(link.context, _attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _text(text: str) -> str:
    # Storable too: a lone surrogate would make the whole export batch fail to encode. And
    # printable, as log lines are: a trace viewer shows a reviewer's reason or a goal's text
    # to an engineer, where a bidirectional override reorders what they read.
    return storable_text(printable(redact(text)))


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _value(value) for key, value in (attributes or {}).items()}


def _value(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return _attributes(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return tuple(_value(item) for item in value)
    return value
