"""A run whose goal is cancelled: told as cancelled (not failed), and shown as the store has it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from plangate.client import Client
from plangate.config import Settings
from plangate.goal_status import NOT_RECORDED, STILL_RUNNING_AT_MOST, UNRECORDED
from plangate.store import GoalRow, OutboxRow, Store
from plangate.tools import ToolRegistry, tool
from schemas import ExecutionCancelled
from tests.conftest import SEED_GOAL
from tests.span_recording import recording_spans
from tests.support import (
    HELD,
    eventually,
    first_envelope,
    only_plan,
    running_pipeline,
    step_runs,
    write_playbook,
    write_yaml,
)

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}
STEPS = [
    {"id": "first", "tool": "first_read"},
    {"id": "slow", "tool": "slow_read", "args": {"n": "${first}"}},
    {"id": "aside", "tool": "quick_read", "args": {"n": "${first}"}},
    {"id": "tell", "tool": "tell_write", "args": {"n": "${slow}"}},
]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


def planner_failures() -> float:
    """Return how many `execution.failed` messages planners have handled in this process."""
    labels = {"stage": "planner", "type": "execution.failed", "outcome": "handled"}
    return REGISTRY.get_sample_value("plangate_messages_total", labels) or 0.0


def outbox_kinds(store: Store, goal_id: str) -> list[str]:
    with store.session() as session:
        rows = session.execute(select(OutboxRow).order_by(OutboxRow.id)).scalars()
        return [r.routing_key for r in rows if r.headers.get("x-plangate-goal-id") == goal_id]


def test_a_goal_cancelled_mid_run_is_answered_and_traced_as_cancelled_not_failed(
    settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Given a run whose first read is recorded, whose slow read is mid-call beside a quick
    read that has answered, and whose write waits for the slow read,
    When an operator cancels the goal,
    Then the cancel's answer shows the recorded read succeeded, the two reads started as
    running (not recorded yet), and only the write skipped; and once the run ends, its
    span is no error but marked cancelled by the operator, it publishes `execution.cancelled`
    (no `execution.failed`, so no planner counts a failure), and every step is recorded.
    """
    started, release = threading.Event(), threading.Event()
    writes: list[int] = []

    @tool(effect="read", idempotent=True)
    def first_read() -> int:
        """Answer at once."""
        return 1

    @tool(effect="read", idempotent=True)
    def slow_read(n: int) -> int:
        """Answer once released."""
        started.set()
        release.wait(10)
        return n + 1

    @tool(effect="read", idempotent=True)
    def quick_read(n: int) -> int:
        """Answer at once."""
        return n + 2

    @tool(effect="write", idempotent=True)
    def tell_write(n: int) -> None:
        """Tell someone."""
        writes.append(n)

    registry = ToolRegistry([first_read, slow_read, quick_read, tell_write])
    failures_before = planner_failures()
    with running_pipeline(
        settings,
        playbook_file=write_playbook(tmp_path, "cancelled run", STEPS),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
        registry=registry,
    ) as pipeline:
        goal_id = pipeline.submit("cancelled run").goal_id
        assert started.wait(10)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        with Client(settings) as client:
            answer = client.cancel(goal_id, "ops-oncall", "wrong census")
            # As if its executor had died: long after the cancel, nothing was recorded.
            with pipeline.store.session() as session:
                long_ago = datetime.now(UTC) - STILL_RUNNING_AT_MOST - timedelta(seconds=1)
                session.execute(
                    update(GoalRow).where(GoalRow.id == goal_id).values(updated_at=long_ago)
                )
            long_after = client.status(goal_id)
        release.set()

        eventually(lambda: len(step_runs(pipeline.store, plan_id)) == 4, what="every record")

        def run_span() -> ReadableSpan | None:
            return next((s for s in spans.get_finished_spans() if s.name == "run plan"), None)

        run = eventually(run_span, what="the run's span")
        eventually(lambda: "execution.cancelled" in outbox_kinds(pipeline.store, goal_id))
        told = ExecutionCancelled.model_validate_json(
            first_envelope(pipeline.store, "execution.cancelled", goal_id).body
        )
        kinds = outbox_kinds(pipeline.store, goal_id)
        with Client(settings) as client:
            later = client.status(goal_id)

    assert answer.status == "cancelled"
    assert answer.steps == {r.step_id: r.status for r in answer.results}
    assert [(r.step_id, r.status, r.error) for r in answer.results] == [
        ("first", "succeeded", None),
        ("slow", "running", UNRECORDED),
        ("aside", "running", UNRECORDED),
        ("tell", "skipped", "not run: the goal is cancelled"),
    ]
    assert [(r.step_id, r.status, r.error) for r in long_after.results] == [
        ("first", "succeeded", None),
        ("slow", "skipped", NOT_RECORDED),
        ("aside", "skipped", NOT_RECORDED),
        ("tell", "skipped", "not run: the goal is cancelled"),
    ]
    assert [(r.step_id, r.status) for r in later.results] == [
        ("first", "succeeded"),
        ("slow", "succeeded"),
        ("aside", "succeeded"),
        ("tell", "skipped"),
    ]
    assert writes == []
    assert run.status.status_code is not StatusCode.ERROR
    attributes = run.attributes or {}
    assert (attributes["plangate.cancelled"], attributes["plangate.cancelled_by"]) == (
        True,
        "ops-oncall",
    )
    assert [e.name for e in run.events] == ["goal cancelled"]
    assert isinstance(told, ExecutionCancelled)
    assert (told.cancelled_by, told.reason) == (
        "ops-oncall",
        "cancelled by ops-oncall: wrong census",
    )
    assert told.steps == {
        "first": "succeeded",
        "slow": "succeeded",
        "aside": "succeeded",
        "tell": "skipped",
    }
    assert "execution.failed" not in kinds
    assert planner_failures() == failures_before


def test_a_goal_cancelled_before_its_run_began_shows_every_step_skipped(
    settings: Settings,
) -> None:
    """Given the seed goal held for a person (no run began), When it is cancelled,
    Then the cancel's answer lists every step skipped: none is shown running."""
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        with Client(settings) as client:
            answer = client.cancel(goal_id, "ops-oncall", "not needed")

    assert [(r.step_id, r.status) for r in answer.results] == [
        (step, "skipped") for step in ("count", "sla", "notify")
    ]
