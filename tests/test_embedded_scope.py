"""Embedded mode is self-contained: `plangate run` carries out its own goal, with exactly the
tools it loaded, and nothing that other processes left in the store."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.store import GoalRow, OutboxRow, open_store
from plangate.tools import ToolRegistry, tool
from schemas import utcnow
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan, outer_environment, step_runs

REPO = str(Path(__file__).resolve().parents[1])


def plangate_env(settings: Settings, **extra: str) -> dict[str, str]:
    inherited = outer_environment()
    return inherited | {
        "PLANGATE_DATA_DIR": str(settings.data_dir),
        "PLANGATE_NAMESPACE": settings.namespace,
        "PYTHONPATH": REPO,
        **extra,
    }


def plangate(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        env=plangate_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_run_does_not_carry_out_a_decision_left_in_the_store_for_another_goal(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held in the embedded store, and approved there with
    `plangate review approve` while no worker (and no broker) runs: the decision waits unsent
    in the store's outbox,
    When `plangate run` runs another, read-only goal on the same store,
    Then that goal completes, the held goal's plan runs nothing and pages no one, and the run
    says where the waiting decision goes.
    """
    with Pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
    reviewers = tmp_path / "reviewers.yaml"
    added = plangate(settings, "reviewers", "add", "alice", "--file", str(reviewers))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    approved = plangate(
        settings,
        "review",
        "approve",
        plan.plan_id,
        PLANGATE_REVIEWERS_FILE=str(reviewers),
        PLANGATE_REVIEWER_TOKEN=token,
        PLANGATE_BROKER_URL="redis://127.0.0.1:1/0",  # nothing listens: the decision waits
    )
    assert approved.returncode == 0, approved.stderr
    assert approved.stderr.count("cannot reach the broker") == 1, approved.stderr
    assert "the decision is recorded" in approved.stderr
    # Left a while ago: one stored moments before is being published by its process (another
    # `plangate run` on the folder, live), and is not said to wait for workers.
    store = open_store(settings.resolved_database_url())
    try:
        with store.session() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.sent_at.is_(None))
                .values(created_at=utcnow() - timedelta(minutes=1))
            )
    finally:
        store.close()

    result = plangate(settings, "run", "how many tickets are open")

    assert result.returncode == 0, result.stderr
    assert "this run carries out only its own goal" in result.stderr
    assert "plangate worker" in result.stderr
    store = open_store(settings.resolved_database_url())
    try:
        assert step_runs(store, plan.plan_id) == {}
        with store.session() as session:
            assert session.get_one(GoalRow, goal_id).status == "approved"
    finally:
        store.close()
    assert read_notifications() == []


@tool(effect="read", description="Say hello.")
def hello() -> str:
    """Say hello."""
    return "hello"


def test_a_run_plans_with_exactly_the_tools_it_loaded(settings: Settings) -> None:
    """Given a store whose catalog holds the demo tools from an earlier run,
    When a pipeline that loaded only `hello` plans the seed goal (a playbook of demo tools),
    Then planning fails naming the unknown tools: it never holds a plan on a tool it lacks.
    """
    with Pipeline(settings) as pipeline:
        pipeline.wait_for(pipeline.submit("how many tickets are open").goal_id, timeout=5)
    registry = ToolRegistry()
    registry.register(hello)

    with Pipeline(settings, registry=registry, own_goals_only=True) as pipeline:
        goal = pipeline.wait_for(pipeline.submit(SEED_GOAL).goal_id, timeout=5)

    assert goal.status == "plan_failed"
    assert "ticket_count" in (goal.status_reason or "")
