"""A goal's decisions found in its trace, and serve's lines about it, by the goal's ids.

A cancel or a retry (serve, the CLI) is a span of the goal's trace, as a review is, and its
log line names that trace; every decision's span names its goal and plan; each approval says
how far the count is; the gate's release names the approvers it signed; an edit's new revision
is published under the edit; serve logs each goal it accepts, in the goal's trace.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from plangate.cancellation import cancel_goal
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Conflict
from plangate.logs import JsonFormatter
from plangate.reviewers import Reviewers, add_reviewer
from plangate.server import create_app
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.span_recording import recording_spans
from tests.support import HELD, eventually, only_plan, running_pipeline, write_yaml

UNPLANNABLE = "Water the plants"  # no packaged playbook matches it: the goal is plan_failed


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


@contextmanager
def json_lines(logger_name: str) -> Iterator[io.StringIO]:
    """Collect `logger_name`'s info lines as serve writes them (JSON, with their trace id)."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def read(lines: io.StringIO, containing: str) -> list[dict[str, object]]:
    return [json.loads(text) for text in lines.getvalue().splitlines() if containing in text]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


@contextmanager
def serving_as(settings: Settings, tmp_path: Path, who: str) -> Iterator[tuple[str, str]]:
    """Run serve in this process with `who` as a reviewer; yield its URL and `who`'s token."""
    team = tmp_path / "reviewers.yaml"
    token = add_reviewer(team, who, [])
    served = settings.model_copy(update={"reviewers_file": team})
    with (
        Client(served) as client,
        serving_app(create_app(served, client=client, reviewers=Reviewers.from_file(team))) as url,
    ):
        yield url, token


@pytest.mark.parametrize(
    ("action", "text", "before", "moved"),
    [
        ("cancel", SEED_GOAL, HELD, "held -> cancelled"),
        ("retry", UNPLANNABLE, {"plan_failed"}, "plan_failed -> submitted"),
    ],
)
def test_a_cancel_or_retry_through_serve_is_a_span_of_the_goals_trace_and_logs_in_it(
    pipeline: Pipeline,
    settings: Settings,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    action: str,
    text: str,
    before: set[str],
    moved: str,
) -> None:
    """Given a goal held (or one no playbook plans), and serve,
    When alice cancels (or retries) it with `POST /api/v1/goals/{id}/cancel` (`/retry`),
    Then the goal's trace has a `cancel goal` (`retry goal`) span naming the goal, alice and
    her reason, linked to the request's span; and serve's line logging the goal's move names
    the goal's trace, not the request's (neither was in the goal's trace).
    """
    submitted = pipeline.submit(text)
    pipeline.wait_for(submitted.goal_id, before, timeout=5)
    with (
        serving_as(settings, tmp_path, "alice") as (url, token),
        json_lines("plangate.store.goals") as lines,
    ):
        path = f"/api/v1/goals/{submitted.goal_id}/{action}"
        said = {"reason": "the customer withdrew it"}
        auth = {"Authorization": f"Bearer {token}"}
        answered = httpx.post(url + path, json=said, headers=auth, timeout=30)
        assert answered.status_code == 200, answered.text
        [span] = eventually(lambda: named(spans, f"{action} goal"), what=f"the {action}'s span")
        [line] = eventually(lambda: read(lines, moved), what="the move's log line")

    attributes = span.attributes or {}
    assert hex_trace(span) == submitted.trace_id
    assert attributes["plangate.goal_id"] == submitted.goal_id
    assert attributes["plangate.decision.action"] == action
    assert attributes["plangate.decision.decided_by"] == "alice"
    assert attributes["plangate.decision.reason"] == "the customer withdrew it"
    [link] = span.links
    request = eventually(
        lambda: next((s for s in spans.get_finished_spans() if s.context == link.context), None),
        what="the request's span",
    )
    assert request.kind is SpanKind.SERVER
    assert hex_trace(request) != submitted.trace_id
    assert line["goal_id"] == submitted.goal_id
    assert line["trace_id"] == submitted.trace_id


def test_a_cancel_refused_opens_no_span_in_the_goals_trace(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given a goal that has completed, When alice cancels it, Then she is refused and the
    goal's trace has no `cancel goal` span: nothing was decided."""
    goal_id = pipeline.submit("How many tickets are open right now?").goal_id
    pipeline.wait_for(goal_id, {"completed"})
    with pytest.raises(Conflict, match="it has ended"):
        cancel_goal(pipeline.store, goal_id, "alice", "too late")

    assert named(spans, "cancel goal") == []


def test_the_gates_decision_and_a_persons_name_their_goal_and_plan(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal, held by the policy, When alice rejects it, Then the `decide` and
    `review decision` spans each name the goal and the plan (neither could be found by them).
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    pipeline.reject(plan_id, "alice", "not today")

    [decide] = named(spans, "decide")
    [review] = named(spans, "review decision")
    for span in (decide, review):
        attributes = span.attributes or {}
        assert (attributes["plangate.goal_id"], attributes["plangate.plan_id"]) == (
            goal_id,
            plan_id,
        )
    assert (review.attributes or {})["plangate.decision.reason"] == "not today"


def test_each_approval_says_its_count_and_the_gate_names_whom_it_signed(
    settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Given the seed plan held for two approvals,
    When alice then bob approve it,
    Then alice's `review decision` says "1 of 2" and bob's "2 of 2" (his said nothing), and the
    gate's `process review.decided` span names the approvers it checked and signed, the
    approval and the key (it named none).
    """
    rule = {"name": "two", "match": "true", "action": "hold", "reason": "r", "approvals": 2}
    policy = write_yaml(tmp_path / "policy.yaml", {"rules": [rule]})
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        pipeline.approve(plan_id, "alice")
        pipeline.approve(plan_id, "bob")
        pipeline.wait_for(goal_id, {"completed"})

    counts = {
        (s.attributes or {})["plangate.decision.decided_by"]: (s.attributes or {})[
            "plangate.approvals"
        ]
        for s in named(spans, "review decision")
    }
    assert counts == {"alice": "1 of 2", "bob": "2 of 2"}
    [release] = named(spans, "process review.decided")
    signed = release.attributes or {}
    assert tuple(signed["plangate.approvers"]) == ("alice", "bob")  # type: ignore[arg-type]
    assert signed["plangate.plan_id"] == plan_id
    assert signed["plangate.goal_id"] == goal_id
    assert signed["plangate.approval_id"]
    assert signed["plangate.key_id"]


def test_an_edits_new_revision_is_published_under_the_edit(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal held, When alice edits its plan, Then the new revision's `publish
    plan.proposed` is a child of her `review decision` span (it was its sibling, under
    `submit goal`), as an approval's publish is.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    held = only_plan(pipeline.store, goal_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in held.steps]
    pipeline.edit(held.plan_id, "alice", steps, summary="checked by alice")

    [edit] = named(spans, "review decision")
    assert edit.context is not None
    parents = [
        s.parent.span_id for s in named(spans, "publish plan.proposed") if s.parent is not None
    ]
    assert parents.count(edit.context.span_id) == 1


def test_serve_logs_each_goal_it_accepts_with_the_goals_id_and_trace(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    """Given serve,
    When a service submits a goal with `POST /api/v1/goals`, then the same goal again (its key),
    Then serve logs a line for each naming the goal, whether it was a duplicate, and the goal's
    trace (its access line named only the request's trace, and no goal).
    """
    goal = {"text": SEED_GOAL, "idempotency_key": "ticket-4711"}
    with (
        serving_as(settings, tmp_path, "alice") as (url, _),
        json_lines("plangate.server.goals") as lines,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        first, again = (http.post("/api/v1/goals", json=goal) for _ in range(2))
        said = read(lines, "accepted")

    assert (first.status_code, again.status_code) == (201, 200)
    accepted = first.json()
    assert [(line["goal_id"], line["duplicate"], line["trace_id"]) for line in said] == [
        (accepted["goal_id"], False, accepted["trace_id"]),
        (accepted["goal_id"], True, accepted["trace_id"]),
    ]


def test_a_settle_through_serve_is_a_span_of_the_goals_trace(
    settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """A settle's request was a trace of its own, and the goal's trace gained only the
    `publish plan.approved` that resumed its run: who settled which step, and how, was not
    in it, as a review, a cancel or a retry is.

    Given a run stopped on its unknown charge, and serve,
    When alice settles the charge as not happened with `POST .../steps/charge/settle`,
    Then the goal's trace has a `settle step` span naming the goal, the plan, the step,
    alice, her comment and that it did not happen, linked to the request's span.
    """
    from plangate.unknown_calls import since_text
    from tests.test_settle import (
        APPROVE_ALL,
        TOKEN,
        api_beside,
        billing_under,
        cut_off_mid_charge,
        since_listed,
    )

    with billing_under(APPROVE_ALL, settings, tmp_path) as billing:
        plan, _ = cut_off_mid_charge(billing)
        goal = billing.wait_for(plan.goal_id, {"needs_attention"})
        goal_trace = goal.trace_headers["traceparent"].split("-")[1]
        body = {
            "happened": False,
            "unknown_since": since_text(since_listed(billing, plan)),
            "comment": "the bank has no such charge",
        }
        with api_beside(billing) as url:
            answered = httpx.post(
                f"{url}/api/v1/reviews/{plan.plan_id}/steps/charge/settle",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            assert answered.status_code == 200, answered.text
            [span] = eventually(lambda: named(spans, "settle step"), what="the settle's span")

    attributes = span.attributes or {}
    assert hex_trace(span) == goal_trace
    assert attributes["plangate.goal_id"] == plan.goal_id
    assert attributes["plangate.plan_id"] == plan.plan_id
    assert attributes["plangate.step_id"] == "charge"
    assert attributes["plangate.decision.action"] == "settle"
    assert attributes["plangate.decision.decided_by"] == "alice"
    assert attributes["plangate.decision.reason"] == "the bank has no such charge"
    assert attributes["plangate.settle.happened"] is False
    [link] = span.links
    request = next(s for s in spans.get_finished_spans() if s.context == link.context)
    assert hex_trace(request) != goal_trace


def test_a_reviewers_token_pasted_into_a_comment_is_redacted_on_the_decisions_span(
    pipeline: Pipeline, settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """A reviewer pasted their own bearer token into a rejection's comment: it reached the
    `review decision` span's `plangate.decision.reason` whole (no shape marks a bare token).

    Given the seed goal held, and serve with alice as a reviewer,
    When alice rejects it with her own token in the comment,
    Then the span as exported says the comment with the token redacted.
    """
    from plangate.span_redaction import redacted_span

    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    with serving_as(settings, tmp_path, "alice") as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        review = f"{url}/api/v1/reviews/{plan_id}"
        shown = httpx.get(review, headers=auth, timeout=30).json()
        comment = f"oops, my token {token} went here"
        body = {"comment": comment, "plan_hash": shown["plan_hash"]}
        rejected = httpx.post(f"{review}/reject", json=body, headers=auth, timeout=30)
        assert rejected.status_code == 200, rejected.text
        [span] = eventually(lambda: named(spans, "review decision"), what="the review's span")

    exported = redacted_span(span).attributes or {}
    assert exported["plangate.decision.reason"] == "oops, my token [redacted] went here"
