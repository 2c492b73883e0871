"""What a run found, shown where people look: `status`, `submit --wait`, `Client.wait()`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.client import Client, GoalHandle
from plangate.errors import GoalNotCompleted, GoalWaiting
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import free_port
from tests.test_distributed import APPROVE_ALL

pytestmark = pytest.mark.redis


def fleet_with(tmp_path: Path, redis_url: str, policy: str | None) -> Fleet:
    env = dict(FAST_SWEEPS)
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        env["PLANGATE_POLICY_FILE"] = str(tmp_path / "policy.yaml")
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path, extra_env=env)
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start_all()
    return fleet


@pytest.fixture
def approving(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    fleet = fleet_with(tmp_path, redis_url, APPROVE_ALL)
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def holding(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """The default policy: the seed goal's plan notifies someone, so it is held."""
    fleet = fleet_with(tmp_path, redis_url, None)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def test_the_seed_goals_findings_are_shown_by_submit_wait_status_and_the_client(
    approving: Fleet,
) -> None:
    """Given workers that approve every plan,
    When the seed goal runs with `plangate submit --wait`,
    Then it prints each step with its output (128 tickets, an SLA of 100) and duration;
    `plangate status` shows the same; `Client.wait()` and `result()` return the outputs.
    """
    done = approving.plangate("submit", SEED_GOAL, "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr + approving.logs()
    goal_id = done.stdout.split()[1].rstrip(":")
    for shown in (done.stdout, approving.plangate("status", goal_id).stdout):
        assert "step count (" in shown, shown
        assert "-> 128" in shown, shown
        assert "-> 100" in shown, shown
        assert " ms" in shown, shown

    with Client(approving.settings()) as client:
        final = client.goal(goal_id).wait(timeout=10)
        assert [r.step_id for r in final.results] == ["count", "sla", "notify"]
        assert all(r.duration_ms is not None for r in final.results)
        outputs = client.goal(goal_id).result(timeout=10)
        # A handle got by a short id holds the whole one (it held the prefix it was given).
        assert client.goal(goal_id[:8]).goal_id == final.goal_id
    assert outputs["count"] == 128
    assert outputs["sla"] == 100


def test_submit_wait_on_a_held_goal_says_at_once_how_to_review_it(holding: Fleet) -> None:
    """Given the default policy, which holds a plan that notifies someone,
    When the seed goal is submitted with `--wait` and a five-minute timeout,
    Then the command returns as soon as the plan is held, with exit code 4 and the command
    that shows the plan; `result()` of a goal then cancelled raises GoalNotCompleted.
    """
    started = time.monotonic()
    done = holding.plangate("submit", SEED_GOAL, "--wait", "--timeout", "300")
    elapsed = time.monotonic() - started

    assert done.returncode == 4, done.stdout + done.stderr
    assert elapsed < 60
    assert "held" in done.stdout
    assert "plangate review show" in done.stderr
    goal_id = done.stdout.split()[1].rstrip(":")
    with Client(holding.settings()) as client:
        client.cancel(goal_id, "alice", "not today")
        with pytest.raises(GoalNotCompleted, match="cancelled") as raised:
            client.goal(goal_id).result(timeout=10)
    assert raised.value.status == "cancelled"
    assert "not today" in str(raised.value)


def test_result_of_a_held_goal_says_at_once_that_it_waits_for_a_person(holding: Fleet) -> None:
    """Given the default policy, which holds the seed plan for a person,
    When a service asks the client for the goal's result with a two-minute timeout,
    Then GoalWaiting is raised as soon as the plan is held, saying how to see it and how to
    wait for the decision (it waited out the whole timeout); with `wait_for_people=True` the
    client waits instead, up to its timeout.
    """
    with Client(holding.settings()) as client:
        goal = client.submit(SEED_GOAL)
        started = time.monotonic()
        with pytest.raises(GoalWaiting, match=r"waits for a person \(held\)") as raised:
            goal.result(timeout=120)
        assert time.monotonic() - started < 60
        assert raised.value.status == "held"
        assert "wait_for_people=True" in str(raised.value)
        with pytest.raises(TimeoutError, match="still held after 1 s"):
            goal.result(timeout=1, wait_for_people=True)


def test_submit_wait_with_no_worker_asks_about_the_workers_early(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a store and a broker but no worker running,
    When a goal is submitted with `--wait` and a 13-second timeout,
    Then after 10 seconds the command says no planner has planned it yet and asks whether the
    workers run (it said nothing until the timeout, five minutes by default); then it times
    out as before, exit 1.
    """
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path)
    assert fleet.plangate("db", "upgrade").returncode == 0

    done = fleet.plangate("submit", SEED_GOAL, "--wait", "--timeout", "13")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "is still submitted after 10 s: no planner has planned it yet" in done.stderr
    assert "Are the workers running (`plangate worker planner|gate|executor`" in done.stderr
    assert "is still submitted after 13 s" in done.stderr


def test_submit_wait_on_an_approved_goal_no_executor_runs_says_where_to_look(
    tmp_path: Path, redis_url: str
) -> None:
    """Given an executor whose trusted keys folder lacks the gate's key (as after a rotation),
    When a goal is submitted with `--wait` and a 13-second timeout,
    Then once it has been approved for 10 seconds the command says no executor started it,
    and points at the executor's trusted keys and the dead letters (it said nothing for five
    minutes); the gate's log names the key it signs with.
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    env = {**FAST_SWEEPS, "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml")}
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path, extra_env=env)
    assert fleet.plangate("db", "upgrade").returncode == 0
    (tmp_path / "executor-keys").mkdir()
    fleet.start("planner")
    fleet.start("gate")
    fleet.start("executor", PLANGATE_TRUSTED_KEYS_DIR=str(tmp_path / "executor-keys"))
    try:
        done = fleet.plangate("submit", SEED_GOAL, "--wait", "--timeout", "20")
    finally:
        fleet.stop_all()

    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"is still approved after 1\d s: no executor has started it", done.stderr)
    assert "PLANGATE_TRUSTED_KEYS_DIR" in done.stderr
    assert "`plangate dlq list`" in done.stderr
    assert "is still approved after 20 s" in done.stderr
    assert "signing approvals with key ed25519:" in fleet.logs()


def test_submit_wait_with_the_broker_down_says_the_goal_waits_for_the_broker(
    tmp_path: Path,
) -> None:
    """Given a broker that does not answer, When a goal is submitted with `--wait`, Then
    after the warning that the goal is stored, the command says it waits for the broker:
    it asked whether the workers were running, which they were."""
    fleet = Fleet(f"redis://127.0.0.1:{free_port()}/0", f"sqlite:///{tmp_path / 'p.db'}", tmp_path)
    assert fleet.plangate("db", "upgrade").returncode == 0

    done = fleet.plangate("submit", SEED_GOAL, "--wait", "--timeout", "11")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach the broker" in done.stderr
    assert "is still submitted after 10 s: the broker did not take it" in done.stderr
    assert "Are the workers running" not in done.stderr


def test_a_goal_waiting_for_a_step_to_be_settled_points_to_the_unsettled_steps() -> None:
    """It pointed to the held plans (`plangate review list`), where a goal needing attention
    is not: its step is in `plangate review unsettled`."""
    waiting = GoalWaiting("g1", "needs_attention", "step 'u' may or may not have happened")

    assert "`plangate review unsettled` lists the steps to settle" in str(waiting)
    assert "review list" not in str(waiting)


def test_a_goal_handle_shows_its_goal_in_a_log_or_a_debugger() -> None:
    """It showed `<plangate.client.GoalHandle object at 0x...>`."""
    assert repr(GoalHandle(None, "1f3a", None, True)) == "GoalHandle('1f3a', duplicate)"  # type: ignore[arg-type]


def test_a_write_being_called_shows_until_when_it_is_claimed(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a non-idempotent write under way on an executor (a process of its own),
    When an operator runs `plangate status` (and `--json`), Then the step shows when its claim
    runs out and what happens then if its executor is gone: an SRE whose executor was killed
    mid-write read "running" for the lease's five minutes, nothing pointing at it."""
    from tests.test_database_restart_mid_write import PLAYBOOK

    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    (tmp_path / "playbook.yaml").write_text(PLAYBOOK)
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(tmp_path / "playbook.yaml"),
            "PLANGATE_TOOLS": "plangate.demo.tools,tests.gated_write_tools",
            "PLANGATE_TEST_GATE_DIR": str(gate_dir),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start_all()
    try:
        goal_id = fleet.plangate("submit", "write first").stdout.strip()
        deadline = time.monotonic() + 30
        while not (gate_dir / "calls").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shown = fleet.plangate("status", goal_id)
        as_json = fleet.plangate("status", goal_id, "--json")
        (gate_dir / "release").touch()

        assert re.search(
            r"step write \(gated_write\): running \(claimed until \d\d:\d\d:\d\d UTC: if its "
            r"executor is gone, it is marked unknown then, for a person to settle\)",
            shown.stdout,
        ), shown.stdout + fleet.logs()
        [write] = [s for s in json.loads(as_json.stdout)["results"] if s["step_id"] == "write"]
        assert write["status"] == "running"
        assert write["claimed_until"] is not None
        deadline = time.monotonic() + 60
        while json.loads(fleet.plangate("status", goal_id, "--json").stdout)["status"] != (
            "completed"
        ):
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.2)
    finally:
        fleet.stop_all()


def test_a_write_of_unknown_outcome_shows_no_duration() -> None:
    """Given a write marked `unknown` when its claim ran out (its executor killed mid-call),
    When its goal's status is read, Then it has no duration: its end is the claim's, not the
    call's ("unknown in 300166 ms" read as a call of five minutes)."""
    from datetime import UTC, datetime, timedelta

    from plangate.goal_status import _result
    from plangate.store.models import StepRunRow

    started = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
    run = StepRunRow(
        plan_id="p1",
        step_id="write",
        goal_id="g1",
        tool="slow_write",
        status="unknown",
        attempt=1,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
    )

    shown = _result({"id": "write", "tool": "slow_write"}, run, "needs_attention", {})

    assert (shown.status, shown.duration_ms) == ("unknown", None)
