"""Spans the collector does not take: said by plangate once, reminded, ended; and counted.

The OTLP exporter logs each batch it fails to send in its own words ("Failed to export spans
batch code: 500", "Transient error ... retrying in 1.03s"), which name no setting to check:
five workers logged 73 such lines in 90 s of a collector answering 500, and nothing counted
the spans lost. Its lines are kept from the log here (the latest is the cause plangate
gives); plangate says one warning when exports start failing, naming the endpoint and its
variable, a reminder at most every `REMIND_SECONDS` with what was lost since, and one line
when the collector takes spans again. `plangate_span_export_failing` is 1 from a failed batch
until one succeeds, for the PlangateTracesLost alert; `plangate_spans_dropped_total` counts the
spans lost, by reason.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from plangate.lasting import Lasting
from plangate.metrics import SPAN_EXPORT_FAILING, SPANS_DROPPED

log = logging.getLogger(__name__)

# At most one reminder this often while exports fail: an outage of an hour is 12 lines.
REMIND_SECONDS = 300.0

# The exporters' own loggers (HTTP/protobuf's, gRPC's): each line of theirs is about a batch.
EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)
# The batch processor's: "Queue full, dropping Span." for each span it has no room for.
PROCESSOR_LOGGER = "opentelemetry.sdk._shared_internal"
_KEPT_LINES = 20
_CAUSE_CHARS = 300


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_CAUSE_CHARS]


NO_ANSWER = (
    "the collector did not answer any try within the export's timeout "
    "(OTEL_EXPORTER_OTLP_TIMEOUT): it hangs, or the network drops the packets"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def cause_of(said: Sequence[str]) -> str:
    """Return the exporter's line that says best why a batch failed.

    Its last line after retries ("... due to timeout, max retries or shutdown.") names no
    cause; the retried error before it does ("Connection refused").
    """
    specific = [line for line in said if "max retries or shutdown" not in line]
    if not specific and said:  # no try failed quickly: each waited for an answer in vain
        return NO_ANSWER
    lines = specific or list(said)
    if not lines:
        return "the exporter gave no reason"
    line = lines[-1].removeprefix("Transient error ")
    return _one_line(line.split(" encountered while exporting")[0])


def refused(endpoint: str) -> str | None:
    """Return why a connection to `endpoint` fails at once, or None if one is made.

    With one try in a short command's half second, the exporter logs only that its tries
    ran out, whether the collector hangs or nothing listens: a connection says which.
    """
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 4317)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=0.5):
            return None
    except TimeoutError:
        return None  # as a hang: nothing answers
    except (OSError, ValueError) as exc:
        return _one_line(f"{type(exc).__name__}: {exc}")


@dataclass
class _Lost:
    """Batches and spans lost in an outage, and since it was last said."""

    batches: int = 0
    spans: int = 0
    batches_since: int = 0
    spans_since: int = 0

    def add(self, batches: int, spans: int) -> None:
        self.batches += batches
        self.spans += spans
        self.batches_since += batches
        self.spans_since += spans


class ExportWatch:
    """Follows each export's outcome, to say an outage in a few lines and count what it loses."""

    def __init__(
        self,
        endpoint: str,
        variable: str,
        *,
        remind_every: float = REMIND_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.variable = variable
        self._lock = threading.Lock()
        self._outage = Lasting(remind_every, clock)
        self._lost = _Lost()

    def exported(self, spans: int, succeeded: bool, cause: str) -> None:
        """Take the outcome of one batch's export: `spans` spans, and why it failed."""
        SPAN_EXPORT_FAILING.set(0 if succeeded else 1)
        if succeeded:
            self._ended()
            return
        SPANS_DROPPED.labels("export_failed").inc(spans)
        with self._lock:
            self._lost.add(1, spans)
            said = self._outage.note()
            if said == "began":
                self._began(cause)
            elif said == "goes on":
                self._remind(cause)

    def queue_full(self) -> bool:
        """Count a span the batch processor dropped; return True if no outage says it already."""
        SPANS_DROPPED.labels("queue_full").inc()
        with self._lock:
            if not self._outage.active:
                return True
            self._lost.add(0, 1)
            return False

    def cause(self, said: Sequence[str]) -> str:
        """Return why a batch failed, from the exporter's lines `said` and the collector."""
        cause = cause_of(said)
        return (refused(self.endpoint) or cause) if cause == NO_ANSWER else cause

    def cut_short(self, waited: float) -> None:
        """Say that the spans a process held as it ended were not all exported in time."""
        said = _exporter_lines.take()
        log.warning(
            "the last spans of this process were not exported: the collector at %s (%s) did "
            "not take them within %.0f s of its end (%s), and they are dropped: check the "
            "collector, or %s",
            self.endpoint,
            self.variable,
            waited,
            cause_of(said) if said else "no answer yet",  # no probe: the exit is waiting
            self.variable,
        )

    def _began(self, cause: str) -> None:
        log.warning(
            "traces do not reach the collector at %s (%s): %s; their spans are dropped until "
            "it answers (counted in plangate_spans_dropped_total): check the collector, or %s",
            self.endpoint,
            self.variable,
            cause,
            self.variable,
            extra={"export_cause": cause},
        )
        self._lost.batches_since = self._lost.spans_since = 0

    def _remind(self, cause: str) -> None:
        log.warning(
            "traces still do not reach the collector at %s (%s) after %d s: %d batches "
            "(%d spans) dropped since the last warning; last: %s",
            self.endpoint,
            self.variable,
            self._outage.seconds(),
            self._lost.batches_since,
            self._lost.spans_since,
            cause,
        )
        self._lost.batches_since = self._lost.spans_since = 0

    def _ended(self) -> None:
        with self._lock:
            lasted, lost = self._outage.end(), self._lost
            self._lost = _Lost()
        if lasted is not None:
            log.warning(
                "traces reach the collector at %s again, after %d s: %d batches (%d spans) "
                "were dropped",
                self.endpoint,
                lasted,
                lost.batches,
                lost.spans,
            )


class _ExporterLines(logging.Filter):
    """Keeps the exporter's lines, for the cause plangate gives, instead of logging them."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            self._lines = [*self._lines[-_KEPT_LINES:], record.getMessage()]
        return False

    def take(self) -> list[str]:
        """Return the lines kept since the last call, and forget them."""
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


class _QueueFull(logging.Filter):
    """Counts the spans the batch processor drops for want of room."""

    watch: ExportWatch | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.watch is None or not str(record.msg).startswith("Queue full"):
            return True
        return self.watch.queue_full()


_exporter_lines = _ExporterLines()
_queue_full = _QueueFull()


class WatchedExporter(SpanExporter):
    """Hands each batch to another exporter, and its outcome to an `ExportWatch`."""

    def __init__(self, inner: SpanExporter, watch: ExportWatch) -> None:
        self.inner = inner
        self.watch = watch

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export `spans` with the inner exporter; its failure is the watch's to say."""
        _exporter_lines.take()  # another exporter's lines, or those logged between batches
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # the processor would log its traceback at each batch
            self.watch.exported(len(spans), False, _one_line(f"{type(exc).__name__}: {exc}"))
            return SpanExportResult.FAILURE
        succeeded = result is SpanExportResult.SUCCESS
        cause = "" if succeeded else self.watch.cause(_exporter_lines.take())
        self.watch.exported(len(spans), succeeded, cause)
        return result

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis)


def watched(inner: SpanExporter, watch: ExportWatch) -> WatchedExporter:
    """Return `inner` watched by `watch`: failures said by plangate, the exporter's lines kept."""
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).addFilter(_exporter_lines)
    processor = logging.getLogger(PROCESSOR_LOGGER)
    if _queue_full not in processor.filters:
        # First: the SDK's own filter there passes one line of a kind per 20 s, the rest
        # would go uncounted.
        processor.filters.insert(0, _queue_full)
    _queue_full.watch = watch
    return WatchedExporter(inner, watch)
