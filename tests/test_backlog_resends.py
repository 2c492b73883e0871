"""A backlog does not multiply itself: goals queued behind others are not sent again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from plangate.client import Client
from plangate.store import AuditRow, GoalRow, open_store
from tests.fleet import Fleet

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]
GOALS = 200
APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: test}\n'


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            # A deadline far shorter than the backlog takes to drain, one slot per stage.
            "PLANGATE_RECONCILE_AFTER_SECONDS": "1",
            "PLANGATE_SWEEP_INTERVAL_SECONDS": "0.5",
            "PLANGATE_CONCURRENCY": "1",
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()


def test_a_backlog_is_not_resent_into_itself(fleet: Fleet) -> None:
    """Given one worker per stage with one slot each, and a one-second deadline,
    When 200 goals are submitted at once (a backlog of many seconds),
    Then every goal completes, and the reconciler resends at most 100 messages per 1,000
    goals (it waits for a stage's backlog instead of adding to it).
    """
    settings = fleet.settings()
    with Client(settings) as client:
        goal_ids = [client.submit(f"how many tickets are open ({n})").goal_id for n in range(GOALS)]
        fleet.start_all()
        store = open_store(settings.resolved_database_url(), upgrade=False)
        started = time.monotonic()
        try:
            while True:
                with store.session() as session:
                    done = session.scalar(
                        select(func.count())
                        .select_from(GoalRow)
                        .where(GoalRow.id.in_(goal_ids), GoalRow.status == "completed")
                    )
                    resends = session.scalar(
                        select(func.count())
                        .select_from(AuditRow)
                        .where(AuditRow.kind == "goal.resent")
                    )
                if done == GOALS:
                    break
                assert time.monotonic() - started < 150, f"{done} done\n{fleet.logs()}"
                time.sleep(0.5)
        finally:
            store.close()
    elapsed = time.monotonic() - started
    per_thousand = (resends or 0) * 1000 / GOALS
    print(
        f"\nbacklog of {GOALS} goals drained in {elapsed:.1f} s; resends {resends}"
        f" ({per_thousand:.0f} per 1,000 goals)"
    )
    assert per_thousand <= 100
