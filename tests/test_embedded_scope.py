"""Embedded mode is self-contained: `plangate run` carries out its own goal, with exactly the
tools it loaded, and nothing that other processes left in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.stages import build_review
from plangate.store import GoalRow, open_store
from plangate.tools import ToolRegistry, tool
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan, step_runs

REPO = str(Path(__file__).resolve().parents[1])


def plangate_env(settings: Settings, **extra: str) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PLANGATE_", "OPENAI_", "OTEL_"))
    }
    return inherited | {
        "PLANGATE_DATA_DIR": str(settings.data_dir),
        "PLANGATE_NAMESPACE": settings.namespace,
        "PYTHONPATH": REPO,
        **extra,
    }


def test_a_run_does_not_carry_out_a_decision_left_in_the_store_for_another_goal(
    settings: Settings,
) -> None:
    """Given the seed goal held in the embedded store, and approved there by a reviewer while
    no worker runs (the decision waits unsent in the store's outbox),
    When `plangate run` runs another, read-only goal on the same store,
    Then that goal completes, the held goal's plan runs nothing and pages no one, and the run
    says where the waiting decision goes.
    """
    with Pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
    store = open_store(settings.resolved_database_url())
    try:
        build_review(settings, store).approve(plan.plan_id, "alice")  # recorded, never sent

        result = subprocess.run(
            [sys.executable, "-m", "plangate", "run", "how many tickets are open"],
            env=plangate_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert result.returncode == 0, result.stderr
        assert "this run carries out only its own goal" in result.stderr
        assert "plangate worker" in result.stderr
        assert step_runs(store, plan.plan_id) == {}
        assert read_notifications() == []
        with store.session() as session:
            assert session.get_one(GoalRow, goal_id).status == "approved"
    finally:
        store.close()


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
