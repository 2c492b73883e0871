"""The seed example for real: Jira counts the tickets, PagerDuty is paged, once per step.

The embedded pipeline runs with `JIRA_URL` and `PAGERDUTY_EVENTS_URL` pointing at a local HTTP
server; the step's idempotency key must reach PagerDuty as `dedup_key` and stay the same
whenever that step of that approved plan runs again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plangate.bus import Envelope
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.step_calls import idempotency_key
from plangate.store import StepRunRow
from schemas import Plan
from tests.conftest import SEED_GOAL
from tests.http_recorder import HttpRecorder, Reply, http_recorder, isolate_environment
from tests.support import (
    HELD,
    next_message,
    only_plan,
    rewind_to_mid_call,
    running_pipeline,
    stored_approval,
)

ROUTING_KEY = "R0UT1NGKEYsecret0123456789abcdef"
ENQUEUE = "/v2/enqueue"
SEARCH = "/rest/api/2/search"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpRecorder]:
    """Jira (131 open tickets) and PagerDuty Events v2, both played by one local server."""
    isolate_environment(monkeypatch)
    with http_recorder() as recorder:
        monkeypatch.setenv("JIRA_URL", recorder.url)
        monkeypatch.setenv("JIRA_TOKEN", "pat-0123")
        monkeypatch.setenv("PAGERDUTY_EVENTS_URL", recorder.url + ENQUEUE)
        monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
        recorder.answer(SEARCH, Reply(200, {"startAt": 0, "maxResults": 0, "total": 131}))
        recorder.answer(ENQUEUE, Reply(202, {"status": "success", "message": "Event processed"}))
        yield recorder


@pytest.fixture
def pipeline(settings: Settings, server: HttpRecorder) -> Iterator[Pipeline]:
    """The embedded pipeline with the offline planner, whatever the developer's environment."""
    with running_pipeline(settings, planner="playbook") as running:
        yield running


def approve_seed_goal(pipeline: Pipeline) -> Plan:
    """Submit the seed goal, approve it as alice once its dry run is shown, and return once
    its outcome is published."""
    with pipeline.bus.observe() as observer:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        next_message(observer, "plan.previewed", goal_id)
        plan = only_plan(pipeline.store, goal_id)
        pipeline.approve(plan.plan_id, "alice")
        next_message(observer, "execution.completed", goal_id)
    goal = pipeline.wait_for(goal_id, timeout=1)
    assert goal.status == "completed", goal.status_reason
    return plan


# The seed plan's notify step, as called: its message with the counts filled in.
NOTIFIED = {"message": "Ticket count 131 exceeded SLA 100"}


def pages(server: HttpRecorder) -> list[dict[str, object]]:
    return [r.json() for r in server.requests if r.path == ENQUEUE]


def test_seed_example_counts_in_jira_and_pages_pagerduty_once(
    pipeline: Pipeline, server: HttpRecorder
) -> None:
    """Given Jira reporting 131 open tickets (SLA 100) and a PagerDuty routing key,
    When the seed goal is approved and runs,
    Then Jira was asked twice (the reviewer's dry run, then the run), and PagerDuty paged once
    with dedup_key = the notify step's idempotency key (the goal, the step, the arguments it
    got); nothing is written
    to the local notifications file.
    """
    plan = approve_seed_goal(pipeline)

    assert [r.path for r in server.requests].count(SEARCH) == 2
    [page] = pages(server)
    assert page["routing_key"] == ROUTING_KEY
    assert page["dedup_key"] == idempotency_key(plan.goal_id, plan.step("notify"), NOTIFIED)
    assert page["payload"] == {
        "summary": "Ticket count 131 exceeded SLA 100",
        "source": "plangate",
        "severity": "error",
        "custom_details": {"goal_id": plan.goal_id, "plan_id": plan.plan_id, "step_id": "notify"},
    }
    assert read_notifications() == []


def test_the_same_approved_plan_delivered_again_pages_nobody_twice(
    pipeline: Pipeline, server: HttpRecorder
) -> None:
    """Given the seed plan approved, run and paged once,
    When its plan.approved message is delivered again,
    Then the executor republishes the outcome without calling PagerDuty again.
    """
    plan = approve_seed_goal(pipeline)

    with pipeline.bus.observe() as observer:
        pipeline.bus.publish([Envelope.of(stored_approval(pipeline.store, plan.plan_id))])
        next_message(observer, "execution.completed", plan.goal_id)

    assert len(pages(server)) == 1


def test_a_page_re_run_after_a_crash_carries_the_same_dedup_key(
    pipeline: Pipeline, server: HttpRecorder
) -> None:
    """Given the seed plan paged once, and the executor then killed before it recorded the page
    (the store rewound to that moment),
    When the same approved plan is delivered again,
    Then notify, being idempotent, runs again and PagerDuty gets a second event with the very
    same dedup_key, which it folds into the first incident; the finished steps are not re-run.
    """
    plan = approve_seed_goal(pipeline)
    rewind_to_mid_call(pipeline.store, plan, "notify")
    searches = [r.path for r in server.requests].count(SEARCH)

    with pipeline.bus.observe() as observer:
        pipeline.bus.publish([Envelope.of(stored_approval(pipeline.store, plan.plan_id))])
        completed = next_message(observer, "execution.completed", plan.goal_id)

    expected = idempotency_key(plan.goal_id, plan.step("notify"), NOTIFIED)
    assert [page["dedup_key"] for page in pages(server)] == [expected, expected]
    assert [r.path for r in server.requests].count(SEARCH) == searches
    assert completed.steps["notify"] == "succeeded"  # type: ignore[attr-defined]
    with pipeline.store.session() as session:
        assert session.get_one(StepRunRow, (plan.plan_id, "notify")).attempt == 2
