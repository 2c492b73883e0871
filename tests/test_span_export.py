"""A collector in trouble is said by plangate in a few lines, and the spans lost are counted.

An SRE's five workers logged the OTLP exporter's own lines for every batch while the collector
answered 500 or was down (73 lines in 90 s), naming no variable to check, and no metric
counted the spans lost.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from plangate import span_export
from tests.otlp_receiver import handler_for
from tests.servers import free_port

# A process exporting as a worker does: JSON log lines, setup_tracing, spans made and flushed
# one at a time as the test asks (a line "span" on stdin), its metrics printed at the end.
EXPORTING_PROCESS = """
import sys
from plangate import logs, metrics, telemetry
logs.setup_logging()
telemetry.setup_tracing("plangate-planner")
for line in sys.stdin:
    with telemetry.tracer().start_as_current_span("step"):
        pass
    telemetry.flush()
    print("flushed", flush=True)
sys.stdout.write(metrics.exposition().decode())
"""


@dataclass
class Collector:
    """An OTLP/HTTP receiver in a thread, answering 500 while `refusing` is set."""

    endpoint: str
    spans_file: Path
    refusing: threading.Event

    def spans(self) -> list[str]:
        return self.spans_file.read_text().splitlines() if self.spans_file.exists() else []


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    refusing = threading.Event()
    spans_file = tmp_path / "spans.jsonl"
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler_for(spans_file, refusing))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(f"http://127.0.0.1:{server.server_address[1]}", spans_file, refusing)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class ExportingProcess:
    """`EXPORTING_PROCESS` running, told to make and flush one span at a time."""

    def __init__(self, endpoint: str, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", EXPORTING_PROCESS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **env},
        )

    def export_one_span(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("span\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "flushed\n", self.process.stderr

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Stop it; return its log lines and its `plangate_spans_dropped_total` by reason."""
        metrics, log = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, log
        dropped = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "plangate_spans_dropped_total"
        }
        return [json.loads(line) for line in log.splitlines()], dropped


def test_a_collector_answering_500_is_one_warning_then_one_line_when_it_takes_spans_again(
    collector: Collector,
) -> None:
    """Given a process exporting to a collector that answers 500,
    When three batches fail and then the collector takes the fourth,
    Then the log says one warning naming the endpoint, its variable and the cause, and one
    line when spans reach it again with what was lost; none of the exporter's own lines;
    and plangate_spans_dropped_total counts the three spans lost.
    """
    collector.refusing.set()
    process = ExportingProcess(collector.endpoint)
    for _ in range(3):
        process.export_one_span()
    collector.refusing.clear()
    process.export_one_span()
    log, dropped = process.finish()

    assert [line for line in log if line["logger"].startswith("opentelemetry")] == []
    began, ended = [line for line in log if line["logger"] == "plangate.span_export"]
    assert began["level"] == "warning"
    assert began["message"].startswith(
        f"traces do not reach the collector at {collector.endpoint} "
        "(OTEL_EXPORTER_OTLP_ENDPOINT): Failed to export spans batch code: 500"
    )
    assert "plangate_spans_dropped_total" in began["message"]
    assert ended["message"].startswith(f"traces reach the collector at {collector.endpoint} again")
    assert ended["message"].endswith("3 batches (3 spans) were dropped")
    assert dropped == {"export_failed": 3.0, "queue_full": 0.0}
    assert len(collector.spans()) == 1


def test_a_collector_that_is_down_is_one_warning_naming_the_refused_connection() -> None:
    """Given a process exporting to an address where nothing listens,
    When two batches fail, each after the exporter's retries,
    Then the log says one warning, whose cause is the refused connection (not the exporter's
    "max retries or shutdown"), and the two spans are counted as lost.
    """
    endpoint = f"http://127.0.0.1:{free_port()}"
    process = ExportingProcess(endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1.5")
    for _ in range(2):
        process.export_one_span()
    log, dropped = process.finish()

    assert [line for line in log if line["logger"].startswith("opentelemetry")] == []
    [said] = [line for line in log if line["logger"] == "plangate.span_export"]
    assert said["message"].startswith(f"traces do not reach the collector at {endpoint} ")
    assert "Connection refused" in said["message"]
    assert "max retries or shutdown" not in said["message"]
    assert dropped["export_failed"] == 2.0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def logged_as_a_worker_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a worker's logging has it: a command run in this process (the `--help` tests) keeps
    the exporter's lines for itself (`quiet_exporter`), and caplog would see none."""
    for name in ("opentelemetry", "plangate.span_export"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "handlers", [])


def test_an_outage_that_goes_on_is_said_again_at_most_every_few_minutes(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """Given an exporter watched, its collector answering 500,
    When batches fail for 12 minutes, one every 30 s,
    Then plangate warns at the first, then once each 5 minutes with the batches lost since,
    and not at the other batches.
    """
    clock = Clock()
    watch = span_export.ExportWatch(
        collector.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT", remind_every=300.0, clock=clock
    )
    exporter = span_export.watched(OTLPSpanExporter(f"{collector.endpoint}/v1/traces"), watch)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    collector.refusing.set()

    with caplog.at_level(logging.WARNING, logger="plangate.span_export"):
        for _ in range(25):  # at 0 s, 30 s, ... 720 s
            provider.get_tracer("t").start_span("step").end()
            clock.now += 30
    provider.shutdown()

    said = [r.getMessage() for r in caplog.records if r.name == "plangate.span_export"]
    assert len(said) == 3, said
    assert said[0].startswith("traces do not reach the collector")
    assert said[1].startswith("traces still do not reach the collector at")
    assert "after 300 s: 10 batches (10 spans) dropped since the last warning" in said[1]
    assert "last: Failed to export spans batch code: 500" in said[1]
    assert "after 600 s: 10 batches (10 spans) dropped since the last warning" in said[2]


def test_a_collector_that_hangs_is_said_as_one_that_does_not_answer_in_time() -> None:
    """A hung collector was said in the exporter's own words, "Failed to export spans batch
    due to timeout, max retries or shutdown.", which name no cause: it read as a dead one.

    Given the exporter's lines of a failed batch: the last one alone (every try timed out), or
    a retried error before it,
    When the cause is taken from them,
    Then a hang is said as a collector that answered no try in time, naming the timeout's
    variable; a refused connection as itself.
    """
    last = "Failed to export spans batch due to timeout, max retries or shutdown."
    refused = "Transient error Connection refused encountered while exporting span batch"

    assert span_export.cause_of([last]) == (
        "the collector did not answer any try within the export's timeout "
        "(OTEL_EXPORTER_OTLP_TIMEOUT): it hangs, or the network drops the packets"
    )
    assert span_export.cause_of([refused, last]) == "Connection refused"


def test_tries_that_ran_out_are_told_apart_as_a_refused_connection_or_a_hang() -> None:
    """Given the exporter's one line when its tries ran out (no cause named),
    When the watch gives the cause, for a collector where nothing listens and one that takes
    the connection and never answers,
    Then the first is said as the refused connection, the second as a collector that does not
    answer in time.
    """
    last = ["Failed to export spans batch due to timeout, max retries or shutdown."]
    nothing_there = span_export.ExportWatch(f"http://127.0.0.1:{free_port()}", "V")
    assert "Connection refused" in nothing_there.cause(last)

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        hung = span_export.ExportWatch(f"http://127.0.0.1:{listening.getsockname()[1]}", "V")
        assert hung.cause(last) == span_export.NO_ANSWER


def test_an_outage_under_light_traffic_reads_as_failing_until_a_batch_gets_through(
    collector: Collector,
) -> None:
    """PlangateTracesLost read `increase` of the spans lost, which fell to 0 between goals
    arriving every 150 s: it went pending and cleared through 9 minutes of total loss.

    Given an exporter watched, its collector answering 500,
    When one batch fails and no span follows for a while, then one batch gets through,
    Then plangate_span_export_failing is 1 from the failure, still 1 with no span since, and
    0 once the collector took a batch.
    """
    from prometheus_client import REGISTRY

    def failing() -> float | None:
        return REGISTRY.get_sample_value("plangate_span_export_failing")

    watch = span_export.ExportWatch(collector.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter = span_export.watched(OTLPSpanExporter(f"{collector.endpoint}/v1/traces"), watch)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    collector.refusing.set()

    provider.get_tracer("t").start_span("step").end()
    after_the_failure = failing()
    after_a_quiet_while = failing()  # nothing exported in between: no goal came
    collector.refusing.clear()
    provider.get_tracer("t").start_span("step").end()
    provider.shutdown()

    assert (after_the_failure, after_a_quiet_while) == (1.0, 1.0)
    assert failing() == 0.0
