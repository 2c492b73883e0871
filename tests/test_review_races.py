"""Decisions on one goal from two places at once (two `serve` replicas, the CLI) take turns.

Each test stops one decision after it has counted its approval and before it commits, and
lets the other decision happen meanwhile, as two replicas did in a platform team's trials on
PostgreSQL: two approvals of a plan needing two each counted only their own and left it held
for good at "2 of 2", and an approval racing a cancel answered 500.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

import approval_gate.review
from approval_gate.expiry import expire_held
from plangate.cancellation import cancel_goal
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Conflict
from schemas import utcnow
from tests.conftest import SEED_GOAL
from tests.support import HELD, eventually, only_plan, running_pipeline, write_yaml

FINANCE = frozenset({"finance"})
TWO_FROM_FINANCE = {
    "rules": [
        {
            "name": "pages-need-two",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "two people from finance decide",
            "requires_role": "finance",
            "approvals": 2,
        }
    ]
}
ONE_PERSON = {
    "rules": [
        {
            "name": "pages-need-one",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "a person decides",
        }
    ]
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    if request.param == "sqlite":
        return settings
    url = request.getfixturevalue("postgres_database_url")
    return settings.model_copy(update={"database_url": url})


@pytest.fixture
def paused_after_counting(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make the next approval wait, once it has counted its approvers, for `meanwhile`.

    It waits at most 2 s: a decision that holds the goal's lock keeps the other one out
    until it commits, and the other goes on after it.
    """
    actions: list[Callable[[], None]] = []
    counting = threading.local()
    real_count, real_counted = (
        approval_gate.review.count_approval,
        approval_gate.review.counted_approvers,
    )

    def count(*args: Any, **kwargs: Any) -> Any:
        counting.after_own = True
        return real_count(*args, **kwargs)

    def counted_then_waiting(*args: Any, **kwargs: Any) -> Any:
        counted = real_counted(*args, **kwargs)
        if getattr(counting, "after_own", False) and actions:
            counting.after_own = False
            done = threading.Event()
            action = actions.pop()
            threading.Thread(target=lambda: (action(), done.set()), daemon=True).start()
            done.wait(timeout=2)
        return counted

    monkeypatch.setattr(approval_gate.review, "count_approval", count)
    monkeypatch.setattr(approval_gate.review, "counted_approvers", counted_then_waiting)
    return actions.append


def held_plan(pipeline: Pipeline) -> tuple[str, str]:
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    return goal_id, only_plan(pipeline.store, goal_id).plan_id


def test_two_approvals_given_at_once_release_a_plan_that_needs_two(
    database_settings: Settings, tmp_path: Path, paused_after_counting: Callable[..., None]
) -> None:
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(database_settings, policy_file=policy) as pipeline:
        goal_id, plan_id = held_plan(pipeline)
        released: list[bool] = []
        paused_after_counting(
            lambda: released.append(pipeline.approve(plan_id, "carol", roles=FINANCE))
        )

        released.append(pipeline.approve(plan_id, "bob", roles=FINANCE))

        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
    assert sorted(released) == [False, True]


def test_the_same_person_approving_twice_at_once_counts_once(
    database_settings: Settings, tmp_path: Path, paused_after_counting: Callable[..., None]
) -> None:
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(database_settings, policy_file=policy) as pipeline:
        _, plan_id = held_plan(pipeline)
        refused: list[Exception] = []

        def again() -> None:
            try:
                pipeline.approve(plan_id, "bob", roles=FINANCE)
            except Conflict as conflict:
                refused.append(conflict)

        paused_after_counting(again)

        assert pipeline.approve(plan_id, "bob", roles=FINANCE) is False

        assert pipeline.review.get(plan_id).approvers == ("bob",)
    assert len(refused) == 1
    assert "bob has approved plan" in str(refused[0])


def test_an_approval_racing_a_cancel_is_one_or_the_other_never_a_crash(
    database_settings: Settings, tmp_path: Path, paused_after_counting: Callable[..., None]
) -> None:
    """The cancel waits for the approval, then cancels the approved goal (nothing runs after
    it); before, the approval found the goal cancelled under it and raised past the API (500)."""
    policy = write_yaml(tmp_path / "policy.yaml", ONE_PERSON)
    with running_pipeline(database_settings, policy_file=policy) as pipeline:
        goal_id, plan_id = held_plan(pipeline)
        cancelled: list[object] = []

        def cancel() -> None:
            try:
                cancel_goal(pipeline.store, goal_id, "dave", "changed my mind")
                cancelled.append("cancelled")
            except Conflict as conflict:
                cancelled.append(conflict)

        paused_after_counting(cancel)

        # If the cancel came first: a refusal, as any decision that lost a race gets.
        with contextlib.suppress(Conflict):
            pipeline.approve(plan_id, "alice")

        eventually(lambda: cancelled, what="the cancel to be answered")
        final = pipeline.wait_for(goal_id, {"cancelled", "completed"}, timeout=10)
    assert final.status in ("cancelled", "completed")


def test_an_approval_racing_the_hold_expiring_is_one_or_the_other_never_a_deadlock(
    database_settings: Settings, tmp_path: Path, paused_after_counting: Callable[..., None]
) -> None:
    """The expiry sweep inserted its decision before it locked the goal, and the approval
    locked the goal before its decision: on PostgreSQL each waited on the other, and the
    server broke the deadlock by failing the person's approval (a 500)."""
    policy = write_yaml(tmp_path / "policy.yaml", ONE_PERSON)
    with running_pipeline(database_settings, policy_file=policy) as pipeline:
        goal_id, plan_id = held_plan(pipeline)
        expired: list[object] = []
        later = utcnow() + timedelta(days=400)
        paused_after_counting(
            lambda: expired.append(expire_held(pipeline.store, later, goal_ids=[goal_id]))
        )

        with contextlib.suppress(Conflict):  # if the expiry came first: a refusal
            pipeline.approve(plan_id, "alice")

        eventually(lambda: expired, what="the expiry sweep to end")
        final = pipeline.wait_for(goal_id, {"expired", "completed"}, timeout=10)
    assert final.status in ("expired", "completed")


@pytest.mark.postgres
def test_a_goal_held_locked_elsewhere_answers_a_decision_at_once_with_a_conflict(
    settings: Settings,
    tmp_path: Path,
    postgres_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gate stopped inside a transaction held its goal's row: each approval of that goal
    waited, a connection of serve's pool each, until the pool ran dry for every request and
    `/readyz` said the store did not answer."""
    monkeypatch.setattr(approval_gate.review, "PERSON_LOCK_WAIT_SECONDS", 0.5)
    database = settings.model_copy(update={"database_url": postgres_database_url})
    policy = write_yaml(tmp_path / "policy.yaml", ONE_PERSON)
    plain = make_url(postgres_database_url).set(drivername="postgresql")
    with running_pipeline(database, policy_file=policy) as pipeline:
        goal_id, plan_id = held_plan(pipeline)
        with psycopg.connect(plain.render_as_string(hide_password=False)) as holder:
            holder.execute("SELECT id FROM goals WHERE id = %s FOR UPDATE", (goal_id,))
            started = time.monotonic()
            with pytest.raises(Conflict, match="being decided elsewhere right now"):
                pipeline.approve(plan_id, "alice")
            waited = time.monotonic() - started
            holder.rollback()

        assert waited < 5
        assert pipeline.approve(plan_id, "alice") is True  # once let go, it decides
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
