"""What a run found, shown where people look: `status`, `submit --wait`, `Client.wait()`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.client import Client
from plangate.errors import GoalNotCompleted
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
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
