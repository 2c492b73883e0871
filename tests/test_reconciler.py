"""The reconciler takes over a stalled run, leaves a live one alone, and waits out backlogs."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from plangate.bus import Stage
from plangate.config import Settings
from plangate.reconciler import reconcile
from plangate.store import DecisionRow, GoalRow, PlanRow, Store, open_store
from plangate.store.goals import plan_values
from plangate.tools import ToolRegistry, tool
from schemas import Plan, Step, utcnow
from tests.support import running_pipeline, write_playbook


def test_a_run_whose_read_is_still_in_flight_is_left_alone_until_a_step_lease_has_passed(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a running goal whose only step, a read, is still being called (a read takes no
    claim, so no step row says so), two minutes after the run started: past the deadline of
    a goal that does not move,
    When the reconciler sweeps with a five-minute step lease,
    Then it resends nothing; with a one-minute lease, it resends the plan's approval, as for a
    dead executor. The run itself completes.
    """
    release = threading.Event()

    @tool(effect="read", idempotent=True)
    def slow_census() -> int:
        """Count everyone, slowly."""
        release.wait(10)
        return 7

    playbook = write_playbook(tmp_path, "census", [{"id": "count", "tool": "slow_census"}])
    registry = ToolRegistry([slow_census])
    with running_pipeline(settings, playbook_file=playbook, registry=registry) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id
        pipeline.wait_for(goal_id, {"running"})
        started_two_minutes_ago(pipeline.store, goal_id)

        assert reconcile(pipeline.store, timedelta(seconds=1)) == []

        started_two_minutes_ago(pipeline.store, goal_id)
        [resent] = reconcile(pipeline.store, timedelta(seconds=1), step_lease=timedelta(minutes=1))
        assert resent.routing_key == "plan.approved"

        release.set()
        goal = pipeline.wait_for(goal_id, timeout=10)
        assert goal.status == "completed", goal.status_reason


def started_two_minutes_ago(store: Store, goal_id: str) -> None:
    """Move the goal's last change (its run's start) two minutes back."""
    with store.session() as session:
        session.get_one(GoalRow, goal_id).updated_at = utcnow() - timedelta(minutes=2)


@pytest.mark.parametrize(
    ("status", "message_type", "stage"),
    [
        ("submitted", "goal.submitted", "planner"),
        ("proposed", "plan.proposed", "gate"),
        ("approved", "review.decided", "gate"),  # a person's approval no gate has signed yet
    ],
)
def test_a_stalled_goal_waits_behind_the_backlog_of_the_stage_its_last_message_goes_to(
    settings: Settings, status: str, message_type: str, stage: Stage
) -> None:
    """Given a goal stalled in `status` for 90 s (a deadline of 60 s),
    When only the other stages' queues hold a backlog, it is resent: its `message_type`;
    When the queue of `stage` (the one that message is routed to) holds one, it waits for it.
    """
    store = open_store(settings.resolved_database_url())
    try:
        stalled(store, "g1", status)
        after = timedelta(seconds=60)
        others: dict[Stage, int] = {s: 40 for s in ("planner", "gate", "executor") if s != stage}

        assert reconcile(store, after, waiting={stage: 40}) == []
        [resent] = reconcile(store, after, waiting=others)
        assert resent.routing_key == message_type
    finally:
        store.close()


def stalled(store: Store, goal_id: str, status: str) -> None:
    """A goal in `status` since 90 s ago, with a plan and (when approved) a person's approval."""
    plan = Plan(plan_id="p1", goal_id=goal_id, revision=1, steps=(Step(id="a", tool="t"),))
    with store.session() as session:
        session.add(GoalRow(id=goal_id, text="count tickets", status=status, meta={}))
        session.flush()
        session.add(PlanRow(**plan_values(plan, "test", {})))
        session.flush()
        if status == "approved":
            session.add(
                DecisionRow(
                    plan_id="p1",
                    goal_id=goal_id,
                    stage="human",
                    action="approve",
                    decided_by="ana",
                    reason="fine",
                    policy_version="1",
                )
            )
    with store.session() as session:
        session.get_one(GoalRow, goal_id).updated_at = utcnow() - timedelta(seconds=90)


def test_a_goal_kept_from_before_a_stricter_rule_is_skipped_and_the_others_are_resent(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Given two goals stalled in `submitted`: one stored before ids were held to one printable
    word (`jira#PROJ-1`) with an empty idempotency key, and one stored since,
    When the reconciler sweeps, Then the second is resent, and the first is logged as one that
    cannot be sent again (it raised, and the whole sweep rolled back: nothing was resent)."""
    store = open_store(settings.resolved_database_url())
    try:
        with store.session() as session:
            session.add(GoalRow(id="jira#PROJ-1", text="old", status="submitted", meta={}))
            session.add(GoalRow(id="fine-1", text="new", status="submitted", meta={}))
            session.add(
                GoalRow(id="keyed", text="k", status="submitted", meta={}, idempotency_key="")
            )
        with store.session() as session:
            for goal_id in ("jira#PROJ-1", "fine-1", "keyed"):
                session.get_one(GoalRow, goal_id).updated_at = utcnow() - timedelta(seconds=90)

        resent = reconcile(store, timedelta(seconds=60))
    finally:
        store.close()

    assert sorted(e.headers["x-plangate-goal-id"] for e in resent) == ["fine-1", "keyed"]
    [said] = [r.getMessage() for r in caplog.records if "cannot be sent again" in r.getMessage()]
    assert said.startswith("goal jira#PROJ-1 stalled while submitted, and cannot be sent again")


def test_a_resend_is_logged_with_the_goal_id_and_its_trace_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The on-call engineer greps one goal's lines, or goes from a line to its trace: the
    resend's line carried neither field (only its text named the goal)."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    store = open_store(settings.resolved_database_url())
    try:
        stalled(store, "g1", "submitted")
        with store.session() as session:
            goal = session.get_one(GoalRow, "g1")
            goal.trace_headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            goal.updated_at = utcnow() - timedelta(seconds=90)

        assert len(reconcile(store, timedelta(seconds=60))) == 1
    finally:
        store.close()

    [line] = [r for r in caplog.records if "sending its last message again" in r.getMessage()]
    assert (getattr(line, "goal_id", None), getattr(line, "trace_id", None)) == ("g1", trace_id)
