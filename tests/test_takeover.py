"""Recovery: a run whose executor died is taken over within one step lease and a sweep or two,
and the reconciler's own resends never read as signs of life."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from executor_worker.run_span import RESUMED
from plangate.client import Client
from plangate.config import Settings
from plangate.reconciler import due_after, reconcile
from plangate.store import AuditRow, GoalRow, Store, open_store
from plangate.tools import ToolRegistry, tool
from schemas import utcnow
from tests import test_otlp_export
from tests.fleet import Fleet
from tests.support import running_pipeline, write_playbook
from tests.test_otlp_export import Receiver

ROOT = Path(__file__).resolve().parent.parent
LEASE, SWEEP, AFTER, REDELIVERY = 2.0, 0.5, 1.0, 1.0
otlp_receiver = test_otlp_export.receiver  # the receiver process, as a fixture here
APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: test}\n'


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    playbook = write_playbook(
        tmp_path,
        "takeover",
        [
            {"id": "first", "tool": "quick_read"},
            {"id": "second", "tool": "stalled_read", "args": {"number": "${first}"}},
        ],
    )
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(playbook),
            "PLANGATE_TOOLS": "tests.takeover_tools",
            "PYTHONPATH": str(ROOT),
            "TAKEOVER_MARKER": str(tmp_path / "stalled.marker"),
            "PLANGATE_STEP_LEASE_SECONDS": str(LEASE),
            "PLANGATE_SWEEP_INTERVAL_SECONDS": str(SWEEP),
            "PLANGATE_RECONCILE_AFTER_SECONDS": str(AFTER),
            "PLANGATE_REDELIVERY_AFTER_SECONDS": str(REDELIVERY),
            "PLANGATE_RELAY_AFTER_SECONDS": "2",
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()


def consuming(fleet: Fleet) -> int:
    """Return how many executors' logs say they consume."""
    logs = fleet.folder.glob("executor-*.log")
    return sum("worker started" in log.read_text() for log in logs)


def poll(check: object, fleet: Fleet, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{fleet.logs()}"
        time.sleep(0.05)


@pytest.mark.redis
def test_an_executor_killed_between_two_reads_is_taken_over_within_a_lease_and_two_sweeps(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Given two executors, and a plan of two reads,
    When the executor running it is SIGKILLed while its second read hangs,
    Then the other one completes the goal within one step lease plus two sweeps of the kill
    (plus the time to handle the resent message).
    """
    fleet.start("planner")
    fleet.start("gate")
    executors = [fleet.start("executor"), fleet.start("executor")]
    poll(lambda: consuming(fleet) == 2, fleet, "both executors to consume")
    with Client(fleet.settings()) as client:
        goal_id = client.submit("takeover please").goal_id
        marker = tmp_path / "stalled.marker"
        poll(lambda: marker.exists() and marker.read_text(), fleet, "the second read to start")
        (doomed,) = [p for p in executors if str(p.pid) == marker.read_text()]
        fleet.kill(doomed)
        killed_at = time.monotonic()

        poll(lambda: client.status(goal_id).status == "completed", fleet, "the goal to complete")
        elapsed = time.monotonic() - killed_at

    bound = f"lease {LEASE} s, sweep {SWEEP} s"
    print(f"\ntaken over and completed {elapsed:.2f} s after the kill ({bound})")
    # A lease and two sweeps, plus handling the resent message (generous: a loaded machine).
    assert elapsed < LEASE + 2 * SWEEP + 3.0, fleet.logs()


@pytest.mark.redis
def test_a_run_taken_over_says_so_in_its_span_and_log_and_calls_no_recorded_step_again(
    fleet: Fleet, tmp_path: Path, otlp_receiver: Receiver
) -> None:
    """Given two executors exporting spans, and a plan of a quick read, then a read that hangs,
    When the executor running it is SIGKILLed while its second read hangs, and the other one
    takes the run over,
    Then the new `run plan` span is marked resumed, with the step the store held recorded;
    that step's span under it says its result was recorded earlier (no call made); and the
    surviving executor's log says it resumed a run another executor left.
    """
    endpoint = otlp_receiver.endpoint
    exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    fleet.start("planner")
    fleet.start("gate")
    executors = [fleet.start("executor", **exporting), fleet.start("executor", **exporting)]
    poll(lambda: consuming(fleet) == 2, fleet, "both executors to consume")
    with Client(fleet.settings()) as client:
        submitted = client.submit("takeover please")
        marker = tmp_path / "stalled.marker"
        poll(lambda: marker.exists() and marker.read_text(), fleet, "the second read to start")
        (doomed,) = [p for p in executors if str(p.pid) == marker.read_text()]
        fleet.kill(doomed)
        poll(lambda: submitted.status().status == "completed", fleet, "the goal to complete")
    fleet.stop_all()  # SIGTERM: the survivor flushes its spans

    ours = [s for s in otlp_receiver.spans() if s["trace_id"] == submitted.trace_id]
    resumed = [
        s for s in ours if s["name"] == "run plan" and s["attributes"].get("plangate.resumed")
    ]
    assert len(resumed) == 1, ours
    (run,) = resumed
    assert run["attributes"]["plangate.resumed.steps_recorded"] == ["first"]
    assert [e["name"] for e in run["events"]] == [RESUMED]
    under = {s["name"]: s for s in ours if s["parent_span_id"] == run["span_id"]}
    reused = under["execute_tool quick_read"]["attributes"]
    assert (reused["plangate.step.recorded_earlier"], reused["plangate.step.status"]) == (
        True,
        "succeeded",
    )
    assert "plangate.step.recorded_earlier" not in under["execute_tool stalled_read"]["attributes"]
    assert f"goal {submitted.goal_id}: {RESUMED}" in fleet.logs()


def test_a_sweep_that_sends_nothing_leaves_the_goal_as_it_was(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a running goal whose read is in flight, its run started two minutes ago,
    When the reconciler sweeps with a five-minute step lease (nothing to resend),
    Then the goal's last activity and its resend count are unchanged: a sweep is no sign of
    life, so the run is taken over once the lease has passed since the run's real activity.
    """
    release = threading.Event()

    @tool(effect="read", idempotent=True)
    def slow_census() -> int:
        """Count everyone, slowly."""
        release.wait(10)
        return 7

    playbook = write_playbook(tmp_path, "census", [{"id": "count", "tool": "slow_census"}])
    with running_pipeline(
        settings,
        playbook_file=playbook,
        registry=ToolRegistry([slow_census]),
    ) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id
        pipeline.wait_for(goal_id, {"running"})
        two_minutes_ago = utcnow() - timedelta(minutes=2)
        with pipeline.store.session() as session:
            session.get_one(GoalRow, goal_id).updated_at = two_minutes_ago

        assert reconcile(pipeline.store, timedelta(seconds=1)) == []

        with pipeline.store.session() as session:
            goal = session.get_one(GoalRow, goal_id)
            assert (goal.updated_at, goal.reconciled) == (two_minutes_ago, 0)
        [resent] = reconcile(pipeline.store, timedelta(seconds=1), step_lease=timedelta(minutes=1))
        assert resent.routing_key == "plan.approved"
        assert resent_entries(pipeline.store, goal_id) == 1
        release.set()


def resent_entries(store: Store, goal_id: str) -> int:
    with store.session() as session:
        rows = session.execute(
            select(AuditRow).where(AuditRow.goal_id == goal_id, AuditRow.kind == "goal.resent")
        ).scalars()
        return len(list(rows))


def test_a_goal_behind_a_backlog_waits_for_it_and_the_resends_back_off(settings: Settings) -> None:
    """Given a goal stalled in `submitted` (its message lost, or queued behind others),
    When the planner's queue holds a backlog it has not yet worked through to the goal,
    Then the reconciler leaves it to the backlog; with the queue empty, it resends, and the
    next resend is due only after 3x the deadline, then 7x.
    """
    store = open_store(settings.resolved_database_url())
    try:
        with store.session() as session:
            session.add(GoalRow(id="g1", text="count tickets", status="submitted", meta={}))
        with store.session() as session:
            session.get_one(GoalRow, "g1").updated_at = utcnow() - timedelta(seconds=90)
        after = timedelta(seconds=60)

        assert reconcile(store, after, waiting={"planner": 40}) == []
        before_it = {"planner": utcnow() - timedelta(seconds=120)}
        assert reconcile(store, after, waiting={"planner": 40}, progress=before_it) == []
        [resent] = reconcile(store, after, waiting={"planner": 0})
        assert resent.routing_key == "goal.submitted"
        assert reconcile(store, after, waiting={}) == []  # due again only at 3x

        assert [due_after(after, n) / after for n in range(4)] == [1, 3, 7, 15]
        assert due_after(after, 8) / after == 127 + 2 * 64
    finally:
        store.close()


def test_a_goal_whose_stage_moved_past_its_message_is_resent_despite_a_backlog(
    settings: Settings,
) -> None:
    """Given a goal stalled in `submitted` for 90 s, and a planner queue with a backlog,
    When the planner has already taken messages made after the goal's (so its was lost, as
    when Redis restarts empty while new goals keep coming),
    Then the reconciler resends it at once rather than waiting for the backlog.
    """
    store = open_store(settings.resolved_database_url())
    try:
        with store.session() as session:
            session.add(GoalRow(id="g2", text="count tickets", status="submitted", meta={}))
        with store.session() as session:
            session.get_one(GoalRow, "g2").updated_at = utcnow() - timedelta(seconds=90)

        [resent] = reconcile(
            store, timedelta(seconds=60), waiting={"planner": 40}, progress={"planner": utcnow()}
        )

        assert resent.routing_key == "goal.submitted"
    finally:
        store.close()


def test_goals_skipped_at_the_head_of_the_list_do_not_hide_a_lost_one(
    settings: Settings,
) -> None:
    """Given the oldest stalled goal being planned (a slow LLM: skipped), and a newer goal
    whose message was lost,
    When the reconciler sweeps one candidate per page,
    Then it pages past the skipped one and resends the lost one.
    """
    store = open_store(settings.resolved_database_url())
    try:
        with store.session() as session:
            session.add(GoalRow(id="old", text="count tickets", status="submitted", meta={}))
            session.add(GoalRow(id="new", text="count tickets", status="submitted", meta={}))
        with store.session() as session:
            old = session.get_one(GoalRow, "old")
            old.updated_at = utcnow() - timedelta(seconds=300)
            old.planning_until = utcnow() + timedelta(minutes=5)
            session.get_one(GoalRow, "new").updated_at = utcnow() - timedelta(seconds=90)

        [resent] = reconcile(store, timedelta(seconds=60), limit=1)

        assert resent.headers["x-plangate-goal-id"] == "new"
    finally:
        store.close()
