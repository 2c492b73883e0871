"""The reconciler takes over a stalled run, and leaves a live one alone."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from plangate.config import Settings
from plangate.reconciler import reconcile
from plangate.store import GoalRow, Store
from plangate.tools import ToolRegistry, tool
from schemas import utcnow
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
