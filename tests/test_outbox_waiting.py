"""What `plangate run` says of other goals' messages waiting unsent in its data folder's outbox.

A run carries out only its own goal: a message another process left unsent (a decision taken
with `plangate review` while no worker ran) waits for a deployment's workers, and the run says
so. One another live `plangate run` is publishing right then is not left for anyone.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import uuid4

from sqlalchemy import update

from plangate.store import OutboxRow, open_store
from plangate.store.outbox import emit
from plangate.store.outbox_waiting import STUCK_AFTER
from schemas import GoalSubmitted, utcnow
from tests.conftest import SEED_GOAL
from tests.support import plangate_in

UNDER_SLA = {"PLANGATE_DEMO_TICKET_COUNT": "42"}  # no page sent: the goal's write is skipped


def _store_unsent(data: Path, created_ago: timedelta) -> None:
    """Leave another goal's message unsent in the folder's outbox, stored `created_ago`."""
    store = open_store(f"sqlite:///{data / 'plangate.db'}")
    try:
        with store.session() as session:
            envelope = emit(session, GoalSubmitted(goal_id=uuid4().hex, text="count tickets"))
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == envelope.outbox_id)
                .values(created_at=utcnow() - created_ago)
            )
    finally:
        store.close()


def test_a_run_counts_only_messages_of_other_goals_left_unsent_past_a_moment(
    tmp_path: Path,
) -> None:
    """Given another goal's message stored in the outbox just now (another `plangate run` on
    this data folder, live, publishing it),
    When a `plangate run` starts, Then it says nothing of it: it said the message waited for
    a deployment's workers. Given one left unsent longer than STUCK_AFTER, it says so.
    """
    data = tmp_path / "data"
    data.mkdir()
    # Dated ahead: however slowly the run starts, it is still "just stored" then.
    _store_unsent(data, created_ago=-timedelta(minutes=1))

    live = plangate_in(data, "run", SEED_GOAL, "--yes", **UNDER_SLA)
    _store_unsent(data, created_ago=STUCK_AFTER + timedelta(seconds=1))
    left = plangate_in(data, "run", SEED_GOAL, "--yes", **UNDER_SLA)

    assert live.returncode == 0, live.stderr
    assert "note:" not in live.stderr
    assert left.returncode == 0, left.stderr
    assert "note: 1 message(s) of other goals wait in this store" in left.stderr
