"""The embedded pipeline end to end: a goal is planned, decided, and (if approved) executed."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.store import DecisionRow, GoalRow, StepRunRow
from plangate.tools import ToolRegistry, tool
from schemas import PlanApproved
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_entries,
    audit_kinds,
    eventually,
    first_envelope,
    next_message,
    only_plan,
    plans_of,
    running_pipeline,
    step_runs,
    write_playbook,
    write_yaml,
)

BREACH_MESSAGE = "Ticket count 128 exceeded SLA 100"


def policy_decision(pipeline: Pipeline, plan_id: str) -> DecisionRow:
    with pipeline.store.session() as session:
        return session.execute(
            select(DecisionRow).where(DecisionRow.plan_id == plan_id, DecisionRow.stage == "policy")
        ).scalar_one()


def test_seed_goal_is_planned_in_three_steps_and_held_for_a_person(pipeline: Pipeline) -> None:
    """Given the seed goal, which ends in a write (paging on-call),
    When it is submitted,
    Then the planner proposes count, sla and notify, and the policy holds it (`hold-writes`).
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id

    goal = pipeline.wait_for(goal_id, HELD, timeout=5)

    plan = only_plan(pipeline.store, goal_id)
    assert [(s.id, s.tool) for s in plan.steps] == [
        ("count", "ticket_count"),
        ("sla", "sla_threshold"),
        ("notify", "notify_oncall"),
    ]
    assert plan.step("notify").when == "steps.count.output > steps.sla.output"
    decision = policy_decision(pipeline, plan.plan_id)
    assert (decision.action, decision.rule) == ("hold", "hold-writes")
    assert goal.status_reason == "the plan writes; a person must approve it"
    assert read_notifications() == []


def test_approved_seed_goal_completes_and_pages_on_call_once(pipeline: Pipeline) -> None:
    """Given the seed goal held for a person, with 128 open tickets against an SLA of 100,
    When alice approves the plan,
    Then the goal completes and exactly one page reads "Ticket count 128 exceeded SLA 100".
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan = only_plan(pipeline.store, goal_id)

    pipeline.approve(plan.plan_id, "alice")

    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "completed", goal.status_reason
    assert step_runs(pipeline.store, plan.plan_id) == {
        "count": "succeeded",
        "sla": "succeeded",
        "notify": "succeeded",
    }
    notifications = read_notifications()
    assert [n["message"] for n in notifications] == [BREACH_MESSAGE]
    assert notifications[0]["goal_id"] == goal_id


def test_ticket_count_within_sla_skips_notify_and_pages_nobody(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given only 42 open tickets (under the SLA of 100),
    When the seed plan is approved and runs,
    Then the goal completes, the notify step is skipped by its condition, and no page is sent.
    """
    monkeypatch.setenv("PLANGATE_DEMO_TICKET_COUNT", "42")
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan = only_plan(pipeline.store, goal_id)

    pipeline.approve(plan.plan_id, "alice")

    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "completed", goal.status_reason
    assert step_runs(pipeline.store, plan.plan_id) == {
        "count": "succeeded",
        "sla": "succeeded",
        "notify": "skipped",
    }
    assert read_notifications() == []


def test_read_only_goal_is_approved_by_policy_and_completes_without_a_person(
    pipeline: Pipeline,
) -> None:
    """Given a goal that only asks a question ("how many tickets are open"),
    When it is submitted,
    Then the policy approves it (`approve-read-only`) and it completes with nobody asked.
    """
    goal_id = pipeline.submit("how many tickets are open").goal_id

    goal = pipeline.wait_for(goal_id, timeout=5)

    assert goal.status == "completed", goal.status_reason
    plan = only_plan(pipeline.store, goal_id)
    decision = policy_decision(pipeline, plan.plan_id)
    assert (decision.action, decision.rule, decision.decided_by) == (
        "approve",
        "approve-read-only",
        "policy",
    )
    assert "goal.held" not in audit_kinds(pipeline.store, goal_id)
    assert step_runs(pipeline.store, plan.plan_id) == {"count": "succeeded", "sla": "succeeded"}


def test_goal_no_playbook_matches_fails_planning_and_says_how_to_add_one(
    pipeline: Pipeline,
) -> None:
    """Given a goal no playbook pattern covers,
    When it is submitted,
    Then it ends `plan_failed`, saying no playbook matched and where to add a pattern.
    """
    goal_id = pipeline.submit("water the office plants").goal_id

    goal = pipeline.wait_for(goal_id, timeout=5)

    assert goal.status == "plan_failed"
    reason = goal.status_reason or ""
    assert "no playbook matched the goal" in reason
    assert "add a pattern for it to" in reason
    assert "PLANGATE_PLAYBOOK_FILE" in reason
    assert plans_of(pipeline.store, goal_id) == []


def test_a_move_a_person_must_look_at_is_logged_as_a_warning(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a goal that fails (no playbook matches it) and one that completes,
    When each moves,
    Then the move to plan_failed is logged at warning, the others at info: a team that keeps
    warnings only saw no failed goal at all.
    """
    caplog.set_level(logging.INFO, logger="plangate.store.goals")
    failed = pipeline.submit("water the office plants").goal_id
    done = pipeline.submit("how many tickets are open").goal_id
    assert pipeline.wait_for(failed, timeout=5).status == "plan_failed"
    assert pipeline.wait_for(done, timeout=5).status == "completed"

    def level_of(goal_id: str, to: str) -> str:
        return eventually(
            lambda: next(
                (
                    r.levelname
                    for r in caplog.records
                    if r.getMessage().startswith(f"goal {goal_id}: ")
                    and f"-> {to} by" in r.getMessage()
                ),
                None,
            ),
            what=f"the move of {goal_id} to {to} logged",
        )

    assert level_of(failed, "plan_failed") == "WARNING"
    assert level_of(done, "completed") == "INFO"


def test_rejected_plan_runs_nothing(pipeline: Pipeline) -> None:
    """Given the seed plan held for a person,
    When bob rejects it with a comment,
    Then the goal is `rejected` with that comment, no step ran and no page was sent.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan = only_plan(pipeline.store, goal_id)

    pipeline.reject(plan.plan_id, "bob", "not during the freeze")

    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "rejected"
    assert goal.status_reason == "not during the freeze"
    assert step_runs(pipeline.store, plan.plan_id) == {}
    assert read_notifications() == []


def test_same_idempotency_key_submitted_twice_is_one_goal(pipeline: Pipeline) -> None:
    """Given a goal submitted with idempotency key "nightly-check",
    When it is submitted again with the same key,
    Then the second submission returns the first goal's id, marked duplicate; one goal exists.
    """
    first = pipeline.submit(SEED_GOAL, idempotency_key="nightly-check")
    second = pipeline.submit(SEED_GOAL, idempotency_key="nightly-check")

    assert (second.goal_id, second.duplicate) == (first.goal_id, True)
    assert not first.duplicate
    pipeline.wait_for(first.goal_id, HELD, timeout=5)
    with pipeline.store.session() as session:
        assert session.scalar(select(func.count()).select_from(GoalRow)) == 1
    assert len(plans_of(pipeline.store, first.goal_id)) == 1


def test_the_same_idempotency_key_submitted_twice_at_once_is_one_goal(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a submission with key "nightly-check" that finds no goal with it,
    When another submission with that key stores its goal before the first one writes,
    Then the first returns the other's goal, marked duplicate, not an error; one goal exists.
    """
    from plangate import submission

    made = submission._goal_message
    other: list[str] = []

    def another_submission_first(*args: Any) -> Any:
        if not other:  # the other submission, in between this one's look and its write
            other.append("")  # (it comes through here too)
            other[0] = pipeline.submit(SEED_GOAL, idempotency_key="nightly-check").goal_id
        return made(*args)

    monkeypatch.setattr(submission, "_goal_message", another_submission_first)
    raced = pipeline.submit(SEED_GOAL, idempotency_key="nightly-check")

    assert (raced.goal_id, raced.duplicate) == (other[0], True)
    with pipeline.store.session() as session:
        assert session.scalar(select(func.count()).select_from(GoalRow)) == 1


def test_redelivered_goal_submitted_yields_one_plan_revision(pipeline: Pipeline) -> None:
    """Given the seed goal already planned and held,
    When its goal.submitted envelope is delivered again,
    Then the planner republishes the plan it made and the gate its decision: still one
    revision, the goal still held, and no second proposal or hold in the audit log.
    """
    with pipeline.bus.observe() as observer:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        next_message(observer, "plan.held", goal_id)
        next_message(observer, "plan.previewed", goal_id)  # the hold's dry run, done once
        envelope = first_envelope(pipeline.store, "goal.submitted", goal_id)
        story = audit_kinds(pipeline.store, goal_id)

        pipeline.bus.publish([envelope])

        republished = next_message(observer, "plan.proposed", goal_id)
        next_message(observer, "plan.held", goal_id)
    rows = plans_of(pipeline.store, goal_id)
    assert [row.revision for row in rows] == [1]
    assert republished.plan.plan_id == rows[0].plan_id  # type: ignore[attr-defined]
    assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
    assert audit_kinds(pipeline.store, goal_id) == story  # nothing was decided twice


def test_redelivered_goal_submitted_after_completion_runs_nothing_again(
    pipeline: Pipeline,
) -> None:
    """Given the seed goal approved and completed (one page sent),
    When its goal.submitted envelope is delivered again,
    Then each stage republishes its earlier result: the goal stays completed, the log records
    no second approval or run, and no second page is sent.
    """
    with pipeline.bus.observe() as observer:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        next_message(observer, "plan.held", goal_id)
        pipeline.approve(only_plan(pipeline.store, goal_id).plan_id, "alice")
        next_message(observer, "execution.completed", goal_id)
        story = audit_kinds(pipeline.store, goal_id)

        pipeline.bus.publish([first_envelope(pipeline.store, "goal.submitted", goal_id)])

        next_message(observer, "execution.completed", goal_id)
    assert pipeline.wait_for(goal_id, timeout=1).status == "completed"
    assert audit_kinds(pipeline.store, goal_id) == story
    assert len(read_notifications()) == 1


def test_a_plan_proposed_again_after_the_policy_approved_it_gets_the_same_approval(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal approved by the policy and completed,
    When its plan.proposed envelope is delivered to the gate again,
    Then the gate republishes the very approval it signed (same id, same plan), records no
    second decision, and nothing runs again.
    """
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "tests"}]},
    )
    with running_pipeline(settings, policy_file=policy) as pipeline:
        with pipeline.bus.observe() as observer:
            goal_id = pipeline.submit(SEED_GOAL).goal_id
            first = next_message(observer, "plan.approved", goal_id)
            next_message(observer, "execution.completed", goal_id)
            story = audit_kinds(pipeline.store, goal_id)

            pipeline.bus.publish([first_envelope(pipeline.store, "plan.proposed", goal_id)])

            again = next_message(observer, "plan.approved", goal_id)
            next_message(observer, "execution.completed", goal_id)
        assert isinstance(first, PlanApproved)
        assert isinstance(again, PlanApproved)
        assert again.approval == first.approval
        assert again.plan == first.plan
        assert pipeline.wait_for(goal_id, timeout=1).status == "completed"
        assert audit_kinds(pipeline.store, goal_id) == story
    assert len(read_notifications()) == 1


def test_policy_denying_notify_tag_ends_goal_denied_without_a_page(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a policy whose first rule denies any step tagged `notify`,
    When the seed goal is submitted,
    Then the goal is `denied` with the rule's reason, nothing runs and no page is sent.
    """
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {
            "rules": [
                {
                    "name": "never-page",
                    "match": 'plan.steps.exists(s, "notify" in s.tags)',
                    "action": "deny",
                    "reason": "paging is switched off this week",
                }
            ]
        },
    )
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id

        goal = pipeline.wait_for(goal_id, timeout=5)

        assert goal.status == "denied"
        assert goal.status_reason == "paging is switched off this week"
        plan = only_plan(pipeline.store, goal_id)
        assert policy_decision(pipeline, plan.plan_id).rule == "never-page"
        with pipeline.store.session() as session:
            assert session.scalar(select(func.count()).select_from(StepRunRow)) == 0
    assert read_notifications() == []


def test_audit_log_tells_the_goals_story(pipeline: Pipeline) -> None:
    """Given the seed goal approved by alice and completed,
    When its audit entries are read,
    Then they tell its story in order: submitted, proposed, held (by policy), approved (by
    alice), running, one entry per step, completed.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan = only_plan(pipeline.store, goal_id)
    pipeline.approve(plan.plan_id, "alice")
    pipeline.wait_for(goal_id, timeout=5)

    entries = audit_entries(pipeline.store, goal_id)

    goal_moves = [(e.kind, e.actor) for e in entries if e.kind.startswith("goal.")]
    assert goal_moves == [
        ("goal.submitted", "submitter"),
        ("goal.proposed", "planner"),
        ("goal.held", "policy"),
        ("goal.approved", "alice"),
        ("goal.running", "executor"),
        ("goal.completed", "executor"),
    ]
    steps = [e for e in entries if e.kind.startswith("step.")]
    assert sorted((e.data["step_id"], e.kind) for e in steps) == [
        ("count", "step.succeeded"),
        ("notify", "step.succeeded"),
        ("sla", "step.succeeded"),
    ]
    seq = {e.kind: e.seq for e in entries if e.kind.startswith("goal.")}
    assert all(seq["goal.running"] < e.seq < seq["goal.completed"] for e in steps)
    held = next(e for e in entries if e.kind == "goal.held")
    assert held.data["rule"] == "hold-writes"
    assert held.data["plan_hash"] == plans_of(pipeline.store, goal_id)[0].plan_hash


def test_a_key_stored_by_another_submission_between_look_and_write_is_one_goal(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a submission with key "nightly-race" whose look finds no goal with it,
    When another submission with that key stores its goal before the first one writes,
    Then the first returns the other's goal, marked duplicate, not an error; one goal exists.
    (The goal is now checked before the look, so the race is made at the look itself.)
    """
    from plangate import submission

    look = submission._goal_with_key
    other: list[str] = []

    def another_submission_in_between(*args: Any) -> Any:
        if other:  # the other submission's own look, and this one's after its write failed
            return look(*args)
        other.append("")
        other[0] = pipeline.submit(SEED_GOAL, idempotency_key="nightly-race").goal_id
        return None  # what this submission's look saw, before the other one wrote

    monkeypatch.setattr(submission, "_goal_with_key", another_submission_in_between)
    raced = pipeline.submit(SEED_GOAL, idempotency_key="nightly-race")

    assert (raced.goal_id, raced.duplicate) == (other[0], True)
    with pipeline.store.session() as session:
        assert session.scalar(select(func.count()).select_from(GoalRow)) == 1


GATE_OPEN = threading.Event()
CALLS_WHILE_RUNNING: list[str] = []


@tool(effect="read")
def slow_count() -> int:
    """Count, waiting until the test lets it answer."""
    CALLS_WHILE_RUNNING.append("slow_count")
    GATE_OPEN.wait(timeout=10)
    return 3


def test_copies_of_an_approval_delivered_while_its_plan_runs_are_left_to_that_run(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given an approved plan whose read is still answering,
    When two copies of its plan.approved arrive meanwhile (the reconciler resent it, and the
    dead letters of both were replayed at once),
    Then the read is called once and the goal completes once: each copy had resumed the run
    beside the live one, calling every read again and publishing the outcome three times.
    """
    GATE_OPEN.clear()
    CALLS_WHILE_RUNNING.clear()
    caplog.set_level(logging.INFO, logger="executor_worker.handler")
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "tests"}]},
    )
    with running_pipeline(
        settings.model_copy(update={"concurrency": 4}),
        policy_file=policy,
        registry=ToolRegistry([slow_count]),
        playbook_file=write_playbook(tmp_path, "count", [{"id": "c", "tool": "slow_count"}]),
    ) as pipeline:
        with pipeline.bus.observe() as observer:
            goal_id = pipeline.submit("count").goal_id
            eventually(lambda: CALLS_WHILE_RUNNING, what="the read to be called")
            copy = first_envelope(pipeline.store, "plan.approved", goal_id)

            pipeline.bus.publish([copy, copy])

            eventually(
                lambda: sum("left to that run" in r.getMessage() for r in caplog.records) == 2,
                what="both copies to be left to the live run",
            )
            GATE_OPEN.set()
            next_message(observer, "execution.completed", goal_id)
            assert observer.next(timeout=0.5) is None  # no second outcome
        assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
    assert CALLS_WHILE_RUNNING == ["slow_count"]
