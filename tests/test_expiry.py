"""Expiry: a plan held for a person longer than its TTL becomes `expired` and never runs."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from approval_gate.expiry import expire_held
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.errors import Conflict
from plangate.logs import JsonFormatter
from plangate.relay import deliver
from plangate.store import DecisionRow, GoalRow, open_store
from schemas import PlanDecided, utcnow
from tests.conftest import SEED_GOAL
from tests.support import HELD, audit_kinds, only_plan, running_pipeline, step_runs, write_yaml

DAY = timedelta(days=1)


def held_goal(pipeline: Pipeline) -> str:
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    return goal_id


def test_a_held_plan_past_its_ttl_expires_and_never_runs(pipeline: Pipeline) -> None:
    """Given the seed plan held, with the default TTL of a day,
    When the expiry runs a day and a minute later,
    Then the goal is `expired` (its own state), decided by `gate` with the TTL as the reason,
    plan.expired is sent, nobody can approve it any more, and nothing runs.
    """
    goal_id = held_goal(pipeline)
    plan = only_plan(pipeline.store, goal_id)

    envelopes = expire_held(pipeline.store, utcnow() + DAY + timedelta(minutes=1))
    deliver(pipeline.store, pipeline.bus, envelopes)

    assert [e.routing_key for e in envelopes] == ["plan.expired"]
    message = PlanDecided.model_validate_json(envelopes[0].body)
    assert (message.goal_id, message.plan_id) == (goal_id, plan.plan_id)
    goal = pipeline.wait_for(goal_id, timeout=1)
    assert goal.status == "expired"
    assert goal.status_reason is not None
    assert "TTL of 86400 s" in goal.status_reason
    with pipeline.store.session() as session:
        decision = session.execute(
            select(DecisionRow).where(
                DecisionRow.plan_id == plan.plan_id, DecisionRow.stage == "human"
            )
        ).scalar_one()
        assert (decision.action, decision.decided_by) == ("expire", "gate")
    assert "goal.expired" in audit_kinds(pipeline.store, goal_id)
    with pytest.raises(Conflict):
        pipeline.approve(plan.plan_id, "alice")
    assert step_runs(pipeline.store, plan.plan_id) == {}
    assert read_notifications() == []


def test_expiry_before_the_ttl_does_nothing_and_is_idempotent(pipeline: Pipeline) -> None:
    """Given the seed plan held,
    When the expiry runs an hour later, then twice a day later,
    Then the first does nothing, the second expires it, the third finds nothing to do.
    """
    goal_id = held_goal(pipeline)

    assert expire_held(pipeline.store, utcnow() + timedelta(hours=1)) == []
    later = utcnow() + 2 * DAY
    assert len(expire_held(pipeline.store, later)) == 1
    assert expire_held(pipeline.store, later) == []

    with pipeline.store.session() as session:
        assert session.get_one(GoalRow, goal_id).status == "expired"


def test_a_rule_sets_its_own_hold_ttl_recorded_with_the_hold(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a gate whose holding rule sets `hold_ttl_seconds: 60`,
    When the expiry runs two minutes later, in a process that has no policy file at all,
    Then the plan expires, although the default TTL (a day) has not passed: the hold
    recorded its expiry when the gate held it.
    """
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {
            "rules": [
                {
                    "name": "hold-writes",
                    "match": "true",
                    "action": "hold",
                    "reason": "short review window",
                    "hold_ttl_seconds": 60,
                }
            ]
        },
    )
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = held_goal(pipeline)
    policy.unlink()
    store = open_store(settings.resolved_database_url())
    try:
        assert expire_held(store, utcnow() + timedelta(seconds=30)) == []
        expired = expire_held(store, utcnow() + timedelta(minutes=2))

        assert len(expired) == 1
        with store.session() as session:
            goal = session.get_one(GoalRow, goal_id)
            assert goal.status == "expired"
            assert "TTL of 60 s" in (goal.status_reason or "")
    finally:
        store.close()


def test_an_approved_plan_does_not_expire(pipeline: Pipeline) -> None:
    """Given the seed plan approved and completed,
    When the expiry runs two days later,
    Then nothing expires: only held plans do.
    """
    goal_id = held_goal(pipeline)
    pipeline.approve(only_plan(pipeline.store, goal_id).plan_id, "alice")
    assert pipeline.wait_for(goal_id, timeout=5).status == "completed"

    assert expire_held(pipeline.store, utcnow() + 2 * DAY) == []


def test_the_embedded_pipeline_expires_held_plans_by_itself(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a pipeline whose rule holds writes for one second, sweeping every 0.1 s,
    When the seed goal is held and nobody decides,
    Then it becomes `expired` on its own, and none of its steps ran.
    """
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {
            "rules": [
                {
                    "name": "hold-briefly",
                    "match": "true",
                    "action": "hold",
                    "reason": "a person has a second",
                    "hold_ttl_seconds": 1,
                }
            ]
        },
    )
    with running_pipeline(settings, policy_file=policy, sweep_interval_seconds=0.1) as pipeline:
        goal_id = held_goal(pipeline)
        plan = only_plan(pipeline.store, goal_id)

        goal = pipeline.wait_for(goal_id, {"expired"}, timeout=10)

        assert goal.status == "expired"
        assert step_runs(pipeline.store, plan.plan_id) == {}
    assert read_notifications() == []


def test_an_expiry_logs_the_goal_and_its_trace(pipeline: Pipeline) -> None:
    """Given the seed plan held, When the sweep expires it, Then its log lines name the goal
    and carry the goal's trace (a sweep runs outside any message: they named neither)."""
    goal_id = held_goal(pipeline)
    with pipeline.store.session() as session:
        traceparent = session.get_one(GoalRow, goal_id).trace_headers["traceparent"]
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("approval_gate.expiry")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        expire_held(pipeline.store, utcnow() + DAY + timedelta(minutes=1))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    [line] = [json.loads(text) for text in lines.getvalue().splitlines() if "expired after" in text]
    assert line["goal_id"] == goal_id
    assert line["trace_id"] == traceparent.split("-")[1]
