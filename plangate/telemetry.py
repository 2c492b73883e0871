"""Trace context: one trace per goal, carried in message headers (W3C `traceparent`).

The SDK's TracerProvider is installed even when nothing exports, so that trace ids exist from
the first message and appear in the CLI and logs; with nothing to receive them, spans that
have a parent are not recorded, only their context passed on (`span_recording`). Export
follows the standard `OTEL_*` variables: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_ENDPOINT`) set, spans go over OTLP, HTTP/protobuf unless
`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; `OTEL_SERVICE_NAME` names the service and
`OTEL_TRACES_SAMPLER` (read by the SDK) samples. Without an endpoint, or with
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, nothing exports and no thread starts.
`PLANGATE_TRACE_LINK_ONLY=1` starts the executor's run in a trace of its own, linked to the
goal's: a run may start hours after the plan. Every exported span is redacted first
(`RedactingExporter`): its name, attributes, events, links and status say no secret. A
collector that does not take them is said by plangate in a few lines, and the spans lost
counted (`span_export`).
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from plangate import span_export
from plangate.addresses import check_collector_url
from plangate.current_settings import current_settings
from plangate.errors import ConfigError, HandBack, Retry
from plangate.span_recording import PassingTracer, ReceivingProvider
from plangate.span_redaction import RedactingExporter

_propagator = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")


# Seconds an exporter may spend on one batch (retries included), for short-lived commands:
# one attempt. The SDK waits about a second (give or take a fifth) before its first retry, and
# takes it when it fits the time left: with 1.0 here, a collector down cost 0.15 s at exit in
# some runs and 1.05 s in others.
SHORT_EXPORT_SECONDS = 0.5
_export_timeout: float | None = None

# Seconds a process's end waits for its last spans to be exported. The SDK's own exit hook
# waits for the exporter (10 s of retries with the collector down) and joins its thread for up
# to 30 s: a worker with its collector down took 12-16 s to exit at SIGTERM, eating into the
# grace an orchestrator gives it.
EXIT_EXPORT_SECONDS = 1.0
_exporting: span_export.WatchedExporter | None = None
_closed = threading.Event()


def short_lived() -> None:
    """Bound span export to `SHORT_EXPORT_SECONDS` in this process, unless OTEL_* sets it."""
    global _export_timeout
    _export_timeout = SHORT_EXPORT_SECONDS


def setup_tracing(service_name: str = "plangate") -> None:
    """Install an SDK TracerProvider (exporting if `OTEL_*` asks) unless one is installed.

    `service_name` is the default of `service.name`; `OTEL_SERVICE_NAME` overrides it.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    environ = _otel_environ()
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = ReceivingProvider(
        resource=Resource.create({SERVICE_NAME: name}), shutdown_on_exit=False
    )
    exporter = exporter_from_env(environ)
    if exporter is not None:
        global _exporting
        variable, url = collector_endpoint(environ)
        watch = span_export.ExportWatch(url, variable)
        _exporting = span_export.watched(RedactingExporter(exporter), watch)
        provider.add_span_processor(BatchSpanProcessor(_exporting))
        atexit.register(close)
    trace.set_tracer_provider(provider)


def _otel_environ() -> Mapping[str, str]:
    # Not Settings: the OTEL_* variables are the OpenTelemetry SDK's documented ones, which the
    # SDK and its exporters read themselves too (sampler, headers, endpoint, timeout).
    return os.environ


def exporter_from_env(environ: Mapping[str, str]) -> SpanExporter | None:
    """Return the OTLP span exporter the `OTEL_*` variables ask for, or None."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    if not any(collector_endpoint(environ)):
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    variable, url = collector_endpoint(environ)
    grpc_host_port = protocol.strip().lower() == "grpc" and "://" not in url
    try:
        # Else the exporter finds out at the first export, after the work, and says it in
        # the SDK's words ("Invalid URL 'x/v1/traces': No scheme supplied"). The gRPC
        # exporter also takes a bare host:port.
        check_collector_url(variable, f"http://{url}" if grpc_host_port else url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if protocol.strip().lower() == "grpc":
        return _grpc_exporter()
    # The exporter reads the endpoint, headers, timeout and compression from the environment.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(timeout=_timeout(environ))


def collector_endpoint(environ: Mapping[str, str]) -> tuple[str, str]:
    """Return the variable naming the collector, and its value (two empty strings: none)."""
    # The traces endpoint is used as it is, before the general one (the SDK's order).
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url
    if url := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "OTEL_EXPORTER_OTLP_ENDPOINT", url
    return "", ""


def _grpc_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
            "pip install opentelemetry-exporter-otlp-proto-grpc (or use http/protobuf)"
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter(timeout=_timeout(_otel_environ()))
    return exporter


def _timeout(environ: Mapping[str, str]) -> float | None:
    """Return the export timeout to impose: none where OTEL_* says one (it is read there)."""
    if environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
    ):
        return None
    return _export_timeout


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans still buffered (at shutdown); does nothing when nothing exports."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis)


def close(timeout_seconds: float = EXIT_EXPORT_SECONDS) -> None:
    """Export the spans still buffered and stop exporting, waiting `timeout_seconds` at most.

    For a process's end (also run at exit): the export goes on in a thread of its own, so a
    collector that is down or hangs holds that thread, not the exit; what it had not taken
    by then is dropped, and said.
    """
    provider = trace.get_tracer_provider()
    exporting = _exporting
    if exporting is None or not isinstance(provider, TracerProvider) or _closed.is_set():
        return
    _closed.set()
    finished = threading.Event()

    def export_then_stop() -> None:
        try:
            provider.shutdown()  # the batch processor exports what it holds, then stops
        finally:
            finished.set()

    threading.Thread(target=export_then_stop, name="plangate-last-spans", daemon=True).start()
    if not finished.wait(timeout_seconds):
        exporting.watch.cut_short(timeout_seconds)


@contextmanager
def flushing() -> Iterator[None]:
    """Flush buffered spans when the block ends, however it ends (for short-lived commands)."""
    try:
        yield
    finally:
        flush()


def link_only() -> bool:
    """Return True if `PLANGATE_TRACE_LINK_ONLY` asks for runs linked to the goal, unparented."""
    return current_settings().trace_link_only


def record_content() -> bool:
    """Return True if `PLANGATE_TRACE_CONTENT` opts in to tool arguments and results on spans.

    Off by default: arguments and results may carry personal data or secrets.
    """
    return current_settings().trace_content


def content_or(text: str, instead: str) -> str:
    """Return `text` where `PLANGATE_TRACE_CONTENT` opts in to content on spans, else `instead`.

    For a tool's own words (its error may quote its arguments or a server's answer), which
    are kept off spans as its arguments and results are.
    """
    return text if record_content() else instead


@functools.cache
def tracer() -> trace.Tracer:
    """Return plangate's tracer.

    It follows a provider installed later, and records spans only where a processor receives
    them (`span_recording`).
    """
    return PassingTracer(trace.get_tracer("plangate"))


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current trace context into message headers."""
    _propagator.inject(headers)


def current_headers() -> dict[str, str]:
    """Return the current trace context as message headers (empty when there is none)."""
    headers: dict[str, str] = {}
    inject(headers)
    return headers


def trace_context(headers: Mapping[str, object]) -> dict[str, str]:
    """Return the W3C trace context a message's headers carry, as the propagator reads it.

    A goal published raw is stored with the trace it came with. Only that is kept: a foreign
    publisher's other headers may be megabytes, or a secret (`authorization`), and a malformed
    `traceparent` kept as it came meant no trace at all for the goal.
    """
    given = {name: value for name in TRACE_HEADERS if isinstance(value := headers.get(name), str)}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=extract(given))
    return carrier


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """Read a trace context from message headers (an empty context if there is none)."""
    traceparent, tracestate = headers.get("traceparent"), headers.get("tracestate")
    if _keepable(traceparent) and _keepable(tracestate):
        return _extracted(traceparent, tracestate)
    return _propagator.extract({k: v for k, v in headers.items() if k in TRACE_HEADERS})


# Longer values are ignored by the propagator (W3C allows 512 characters), and a message's
# headers may hold megabytes: not kept.
_KEPT_HEADER_CHARS = 512


def _keepable(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= _KEPT_HEADER_CHARS)


# A goal's messages carry the same few trace contexts, each read several times (its consumer
# span, its producer spans, the ids logged): parsed once. A Context cannot be changed, so one
# is safely shared; at most this many are kept.
@functools.lru_cache(maxsize=1024)
def _extracted(traceparent: str | None, tracestate: str | None) -> otel_context.Context:
    carrier = {"traceparent": traceparent, "tracestate": tracestate}
    return _propagator.extract({k: v for k, v in carrier.items() if v is not None})


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    """Return the 32-hex trace id carried by `headers`, if any."""
    span_context = trace.get_current_span(extract(headers)).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_trace_id() -> str | None:
    """Return the trace id of the current span, if it is valid."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_span_ids() -> tuple[str, str] | None:
    """Return the trace id and span id of the current span, if it is valid."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


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
        with (
            tracer().start_as_current_span(
                f"process {routing_key}",
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kombu",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": queue,
                    "messaging.rabbitmq.destination.routing_key": routing_key,
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            errors_recorded(span),
        ):
            yield span
    finally:
        otel_context.detach(token)


@contextmanager
def errors_recorded(span: Span) -> Iterator[None]:
    """Record an exception that leaves the block as the span's error, unless it defers work.

    A Retry (a step another run has claimed, a key not trusted yet) or a HandBack (an
    executor stopping) is the message waiting its turn: recorded as an error with its stack,
    a routine wait read as a failure in the trace viewer. It is an event of the span instead.
    """
    try:
        yield
    except (Retry, HandBack) as deferred:
        # Redacted as every text of a span is, by the exporter.
        span.add_event("deferred", {"plangate.deferred": f"{type(deferred).__name__}: {deferred}"})
        raise
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise


@contextmanager
def run_span(
    name: str, *, linked_only: bool, link_to: Mapping[str, str] | None = None
) -> Iterator[Span]:
    """Open a span linked to the current one (and to the span in `link_to`, e.g. the plan's).

    It is parented by the current span unless `linked_only`: a run may start hours after the
    plan, in another process, and some teams want it as its own trace.
    """
    incoming = trace.get_current_span().get_span_context()
    links = [Link(incoming)] if incoming.is_valid else []
    if link_to:
        planned = trace.get_current_span(extract(link_to)).get_span_context()
        if planned.is_valid and planned != incoming:
            links.append(Link(planned, {"plangate.link": "plan"}))
    parent = otel_context.Context() if linked_only else None  # an empty context: a new trace
    with (
        tracer().start_as_current_span(
            name,
            context=parent,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span,
        errors_recorded(span),
    ):
        yield span
