"""One trace per goal: the context travels in message headers through every stage."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from plangate import telemetry
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import HandBack, Retry
from plangate.logs import JsonFormatter
from plangate.tools import ToolRegistry, tool
from schemas import Plan
from tests.conftest import SEED_GOAL
from tests.span_recording import recording_spans
from tests.support import eventually, running_pipeline, write_yaml
from tests.test_cancel import APPROVE_ALL


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


def test_a_held_goal_is_one_trace_from_submission_to_the_last_tool_call(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal, when a person approves it, then every span shares the goal's trace."""
    submitted = pipeline.submit(SEED_GOAL)
    pipeline.wait_for(submitted.goal_id, {"held"})
    plan_id = pipeline.review.held()[0].plan.plan_id
    pipeline.approve(plan_id, "alice")
    pipeline.wait_for(submitted.goal_id, {"completed"})
    expected = {
        "submit goal",
        "publish goal.submitted",
        "process goal.submitted",
        "plan",
        "decide",
        "review decision",
        "process plan.approved",
        "run plan",
        "execute_tool ticket_count",
        "execute_tool sla_threshold",
        "execute_tool notify_oncall",
    }

    def finished() -> list[ReadableSpan] | None:
        # The goal is stored completed inside the executor's handler: its spans end just after.
        ours = [s for s in spans.get_finished_spans() if s.context is not None]
        return ours if expected <= {s.name for s in ours} else None

    try:
        ours = eventually(finished, timeout=5, what="the run's spans")
    except AssertionError:
        names = sorted({s.name for s in spans.get_finished_spans()})
        raise AssertionError(f"missing {sorted(expected - set(names))} in {names}") from None
    trace_ids = {format(s.context.trace_id, "032x") for s in ours if s.context is not None}

    assert trace_ids == {submitted.trace_id}


def test_tool_arguments_and_outputs_are_not_recorded_on_spans(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given a run, then no span attribute carries the notify message or a tool's output."""
    submitted = pipeline.submit(SEED_GOAL)
    pipeline.wait_for(submitted.goal_id, {"held"})
    pipeline.approve(pipeline.review.held()[0].plan.plan_id, "alice")
    pipeline.wait_for(submitted.goal_id, {"completed"})

    values = [str(v) for s in spans.get_finished_spans() for v in (s.attributes or {}).values()]
    assert not any("exceeded SLA" in v for v in values)


def test_the_run_of_a_plan_links_to_the_span_that_made_the_plan(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given a held plan approved later by a person, then its `run plan` span links to `plan`."""
    submitted = pipeline.submit(SEED_GOAL)
    pipeline.wait_for(submitted.goal_id, {"held"})
    pipeline.approve(pipeline.review.held()[0].plan.plan_id, "alice")
    pipeline.wait_for(submitted.goal_id, {"completed"})

    # The goal is completed in the store a moment before the handler's spans end.
    eventually(
        lambda: any(s.name == "run plan" for s in spans.get_finished_spans()), what="run span"
    )
    finished = spans.get_finished_spans()
    (plan,) = [s for s in finished if s.name == "plan"]
    (run,) = [s for s in finished if s.name == "run plan"]
    assert plan.context is not None
    linked = {(link.context.trace_id, link.context.span_id) for link in run.links}
    assert (plan.context.trace_id, plan.context.span_id) in linked


def test_tool_arguments_and_results_are_recorded_only_when_the_operator_opts_in(
    pipeline: Pipeline, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given PLANGATE_TRACE_CONTENT=1, then execute_tool spans carry the arguments and result."""
    monkeypatch.setenv("PLANGATE_TRACE_CONTENT", "1")
    submitted = pipeline.submit(SEED_GOAL)
    pipeline.wait_for(submitted.goal_id, {"held"})
    pipeline.approve(pipeline.review.held()[0].plan.plan_id, "alice")
    pipeline.wait_for(submitted.goal_id, {"completed"})

    eventually(
        lambda: any(s.name == "run plan" for s in spans.get_finished_spans()), what="run span"
    )
    (notify,) = [s for s in spans.get_finished_spans() if s.name == "execute_tool notify_oncall"]
    attributes = dict(notify.attributes or {})
    assert "exceeded SLA" in str(attributes["gen_ai.tool.call.arguments"])
    assert "notification_id" in str(attributes["gen_ai.tool.call.result"])


def test_headers_read_again_give_the_same_parent_and_other_headers_their_own() -> None:
    """A message's trace context is read several times (its spans, its logged ids): each read
    of the same headers gives the same parent, and headers that differ in their trace state
    alone give a parent with that state."""
    traceparent = "00-f573e3526015170857aaa9c66e897dc4-eafc4e6955ad1c9d-01"

    def parent(headers: dict[str, str]) -> trace.SpanContext:
        return trace.get_current_span(telemetry.extract(headers)).get_span_context()

    first = parent({"traceparent": traceparent, "tracestate": "vendor=a"})
    assert parent({"traceparent": traceparent, "tracestate": "vendor=a"}) == first
    assert format(first.trace_id, "032x") == "f573e3526015170857aaa9c66e897dc4"
    assert first.trace_state.get("vendor") == "a"
    assert (
        parent({"traceparent": traceparent, "tracestate": "vendor=b"}).trace_state.get("vendor")
        == "b"
    )
    assert parent({"traceparent": traceparent}).trace_state.get("vendor") is None
    assert not parent({}).is_valid


@tool(effect="read")
def refused_read() -> int:
    """Fail, as a read whose service answers 503 does, quoting the key it was asked for."""
    raise RuntimeError("upstream returned 503 for key k8")


@pytest.mark.parametrize("content", [False, True])
def test_a_failed_step_and_its_failed_run_are_errors_in_the_trace(
    settings: Settings,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    content: bool,
) -> None:
    """An engineer searching a trace viewer for errors finds the failed tool call and the
    run it failed: both were `unset`, the step's status told nowhere on its span.

    The tool's error text, which may quote its arguments (`k8`, from the goal), became the
    span's status description, though arguments are kept off spans: it is there only with
    PLANGATE_TRACE_CONTENT; the exception's type always is.
    """
    if content:
        monkeypatch.setenv("PLANGATE_TRACE_CONTENT", "1")
    playbook = {
        "playbooks": [
            {
                "name": "refused",
                "pattern": "^refused$",
                "summary": "one read that fails",
                "steps": [{"id": "look", "tool": "refused_read"}],
            }
        ]
    }
    with running_pipeline(
        settings,
        registry=ToolRegistry([refused_read]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", playbook),
    ) as pipeline:
        goal_id = pipeline.submit("refused").goal_id
        assert pipeline.wait_for(goal_id, {"failed"}).status == "failed"

        def ended() -> dict[str, ReadableSpan] | None:
            named = {s.name: s for s in spans.get_finished_spans()}
            return named if {"run plan", "execute_tool refused_read"} <= set(named) else None

        named = eventually(ended, timeout=5, what="the run's spans")

    call = named["execute_tool refused_read"]
    assert call.status.status_code is StatusCode.ERROR
    assert ("for key k8" in (call.status.description or "")) is content
    assert (call.attributes or {})["error.type"] == "RuntimeError"
    assert (call.attributes or {})["plangate.step.status"] == "failed"
    assert named["run plan"].status.status_code is StatusCode.ERROR


@tool(effect="write", idempotent=False, timeout=0.2)
def slow_transfer() -> str:
    """Move money, answering after its deadline (its outcome unknown)."""
    threading.Event().wait(1.0)  # the workload: a call that outlasts its deadline
    return "moved"


def test_a_run_paused_for_a_write_of_unknown_outcome_is_an_error_in_the_trace(
    settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """The alert for goals needing attention led to a trace that read as healthy: the run's
    span unset, nothing saying a write may have happened.

    Given a write that is not idempotent and answers after its deadline,
    When its goal is paused for a person (needs_attention),
    Then the run's span is an error saying a write may or may not have happened.
    """
    playbook = {
        "playbooks": [
            {
                "name": "transfer",
                "pattern": "^transfer$",
                "summary": "one slow write",
                "steps": [{"id": "move", "tool": "slow_transfer"}],
            }
        ]
    }
    with running_pipeline(
        settings,
        registry=ToolRegistry([slow_transfer]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", playbook),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("transfer").goal_id
        assert pipeline.wait_for(goal_id, {"needs_attention"}, timeout=10).status == (
            "needs_attention"
        )
        run = eventually(
            lambda: next((s for s in spans.get_finished_spans() if s.name == "run plan"), None),
            timeout=5,
            what="the run's span",
        )

    assert run.status.status_code is StatusCode.ERROR
    assert "may or may not have happened" in (run.status.description or "")


def test_a_dead_letter_is_an_error_in_its_goals_trace_and_its_log_line_names_the_goal(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given a goal published by a foreign service with its ids and a W3C traceparent in the
    headers, but a field the contract does not have,
    When the planner dead-letters it,
    Then the caller's trace shows a `dead-letter goal.submitted` span in error with the reason
    (it showed a bare `publish` span, its status unset), and the log line names the goal, the
    message and the trace (it named none of them).
    """
    trace_id = "bf49d26247de4dbb8f32964a88feeb36"
    headers = {
        "x-plangate-goal-id": "goal-from-billing",
        "x-plangate-message-id": "message-from-billing",
        "traceparent": f"00-{trace_id}-bcb24e439d954f94-01",
    }
    body = json.dumps({"schema_version": 1, "type": "goal.submitted", "extra_field": 1}).encode()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("plangate.bus.settlement").addHandler(handler)
    try:
        with pipeline.bus.connection() as connection:
            producer = Producer(connection.channel(), exchange=pipeline.bus.topology.exchange)
            producer.publish(
                body,
                routing_key="goal.submitted",
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
            )
        dead = eventually(
            lambda: [
                s for s in spans.get_finished_spans() if s.name == "dead-letter goal.submitted"
            ],
            what="the dead letter's span",
        )
    finally:
        logging.getLogger("plangate.bus.settlement").removeHandler(handler)

    [span] = dead
    assert span.context is not None
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.status.status_code is StatusCode.ERROR
    assert "extra_field" in str(span.attributes["plangate.dead_letter.reason"])
    [line] = [json.loads(text) for text in lines.getvalue().splitlines() if "dead-lettered" in text]
    assert line["goal_id"] == "goal-from-billing"
    assert line["message_id"] == "message-from-billing"
    assert line["trace_id"] == trace_id
    # From the line to `plangate dlq show ID`: the id the letter is listed under.
    [letter] = pipeline.bus.dead_letters()
    assert line["dead_letter_id"] == letter.message_id
    assert f"as {letter.message_id}: " in line["message"]


def test_an_edit_is_a_review_decision_span_naming_the_editor_and_the_new_revision(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal held, When alice edits its plan, Then the goal's trace has a
    `review decision` span for the edit, naming alice and the revision it made (an edit
    showed only as a bare `publish plan.proposed`)."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    held = pipeline.review.held()[0].plan
    plan = Plan.model_validate(held.body)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in plan.steps]

    pipeline.edit(held.plan_id, "alice", steps, summary="checked by alice")

    [span] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "review decision" and s.attributes["plangate.decision.action"] == "edit"
    ]
    assert span.attributes["plangate.decision.decided_by"] == "alice"
    assert span.attributes["plangate.plan_hash"] == held.plan_hash
    assert span.attributes["plangate.edit.plan_id"] != held.plan_id
    submit = next(s for s in spans.get_finished_spans() if s.name == "submit goal")
    assert span.context.trace_id == submit.context.trace_id


def test_each_approval_of_a_plan_needing_two_is_a_review_decision_span(
    settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Given the seed plan held for two approvals, When alice then bob approve it, Then the
    goal's trace has a `review decision` span for each (alice's, which only counted, had none).
    """
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {
            "rules": [
                {"name": "two", "match": "true", "action": "hold", "reason": "r", "approvals": 2}
            ]
        },
    )
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, {"held"})
        plan_id = pipeline.review.held()[0].plan.plan_id
        pipeline.approve(plan_id, "alice")
        pipeline.approve(plan_id, "bob")
        pipeline.wait_for(goal_id, {"completed"})

    decided = [
        s.attributes["plangate.decision.decided_by"]
        for s in spans.get_finished_spans()
        if s.name == "review decision"
    ]
    assert sorted(decided) == ["alice", "bob"]


def test_a_persons_decision_logs_its_move_in_the_goals_trace_not_the_requests(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal held, When alice approves it inside another trace (an HTTP
    request's, as in `serve`), Then the line logging the goal's move names the goal's trace and
    the decision's span: it is written after the commit, when the decision's span has ended, and
    named no trace at all (or the request's)."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan_id = pipeline.review.held()[0].plan.plan_id
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("plangate.store.goals")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with telemetry.tracer().start_as_current_span("POST /api/reviews") as request:
            pipeline.approve(plan_id, "alice")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    [decision] = [s for s in spans.get_finished_spans() if s.name == "review decision"]
    assert decision.context is not None
    [line] = [
        json.loads(text) for text in lines.getvalue().splitlines() if "approved by alice" in text
    ]
    assert line["goal_id"] == goal_id
    assert line["trace_id"] == format(decision.context.trace_id, "032x")
    assert line["trace_id"] != format(request.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(decision.context.span_id, "016x")


def test_a_message_waiting_its_turn_is_an_event_of_its_span_not_an_error(
    spans: InMemorySpanExporter,
) -> None:
    """An executor deferring a run whose step another run has claimed raised a Retry: its
    span was an error with the stack trace, and the routine wait read as a failure in Jaeger.

    Given a message whose handling raises a Retry, one a HandBack, and one a ValueError,
    When each span ends,
    Then the first two are no error, each with a `deferred` event saying why; the third is
    an error, its exception recorded.
    """
    raised: list[Exception] = [
        Retry("step 'w' is claimed by a run until 07:45:30 UTC, not recorded yet"),
        HandBack("this executor stops"),
        ValueError("a fault of the handler's"),
    ]
    for exc in raised:
        with pytest.raises(type(exc)), telemetry.consumer_span("q", "plan.approved", {}):
            raise exc

    waited, handed_back, failed = spans.get_finished_spans()
    for deferred, exc in ((waited, raised[0]), (handed_back, raised[1])):
        assert deferred.status.status_code is StatusCode.UNSET
        [event] = deferred.events
        assert event.name == "deferred"
        assert (event.attributes or {})["plangate.deferred"] == f"{type(exc).__name__}: {exc}"
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
