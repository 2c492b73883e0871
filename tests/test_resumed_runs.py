"""A run says it resumed another executor's run only once it takes that run over.

A copy of a run's `plan.approved` can reach a second executor while the first still runs the
plan (RabbitMQ gives a message out again when its consumer_timeout closes a channel under a
long run). The second finds a step claimed by a live run and comes back later: it resumed
nothing, and must not say it did.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import update

from executor_worker.run_span import RESUMED
from plangate.bus import Delivery
from plangate.config import Settings
from plangate.errors import Retry
from plangate.stages import build_handler
from plangate.store import StepRunRow
from plangate.tools import ToolRegistry, tool
from schemas import utcnow
from tests.span_recording import recording_spans
from tests.support import (
    only_plan,
    running_pipeline,
    step_runs,
    stored_approval,
    write_playbook,
    write_yaml,
)
from tests.test_cancelled_runs import APPROVE_ALL

STEPS = [
    {"id": "count", "tool": "count_tickets"},
    {"id": "page", "tool": "page_oncall", "args": {"count": "${count}"}},
]
COPY = Delivery("plangate.executor", "plan.approved", {}, 1, redelivered=True)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


def resumed_runs(spans: InMemorySpanExporter) -> list[list[str]]:
    """Return the steps recorded of each `run plan` span marked resumed."""
    return [
        list(span.attributes.get("plangate.resumed.steps_recorded", []))
        for span in spans.get_finished_spans()
        if span.name == "run plan" and span.attributes and span.attributes.get("plangate.resumed")
    ]


def test_a_copy_that_finds_the_run_live_defers_without_saying_it_resumed_it(
    settings: Settings,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given an executor running a plan (a read, then a write that is not idempotent), its
    write claimed and under way,
    When a copy of the plan's message reaches a second executor on the same store,
    Then the second defers to the live run (it comes back once the claim runs out) and says
    nothing of resuming a run in its log or its `run plan` span (it said "resumed a run
    another executor left", the first executor alive); and once the write's claim has run
    out (as when its executor died), the second takes the run over and says so, with the
    read recorded: the write, of unknown outcome now, waits for a person.
    """
    writing, release = threading.Event(), threading.Event()

    @tool(effect="read", idempotent=True)
    def count_tickets() -> int:
        """Answer at once."""
        return 7

    @tool(effect="write", idempotent=False)
    def page_oncall(count: int) -> str:
        """Page, once released."""
        writing.set()
        release.wait(30)
        return f"paged about {count}"

    registry = ToolRegistry([count_tickets, page_oncall])
    caplog.set_level(logging.INFO, logger="executor_worker")
    with running_pipeline(
        settings,
        playbook_file=write_playbook(tmp_path, "page", STEPS),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
        registry=registry,
        tampers=True,  # the write's claim is run out by hand below
    ) as pipeline:
        try:
            goal_id = pipeline.submit("page please").goal_id
            assert writing.wait(10)
            plan = only_plan(pipeline.store, goal_id)
            copy = stored_approval(pipeline.store, plan.plan_id)
            other = build_handler(
                "executor", pipeline.settings, pipeline.store, pipeline.bus, registry
            )

            with pytest.raises(Retry, match="step 'page' is claimed by a run until"):
                other(copy, COPY)

            assert RESUMED not in caplog.text
            assert resumed_runs(spans) == []

            with pipeline.store.session() as session:  # its executor died: its lease ran out
                session.execute(
                    update(StepRunRow)
                    .where(StepRunRow.plan_id == plan.plan_id, StepRunRow.step_id == "page")
                    .values(lease_until=utcnow() - timedelta(seconds=1))
                )
            [paused] = other(copy, COPY)
            recorded = step_runs(pipeline.store, plan.plan_id)
        finally:
            release.set()

    assert paused.routing_key == "execution.paused"
    assert recorded == {"count": "succeeded", "page": "unknown"}
    assert f"goal {goal_id}: {RESUMED} (plan {plan.plan_id})" in caplog.text
    assert "steps already recorded, not run again: count" in caplog.text
    assert resumed_runs(spans) == [["count"]]
