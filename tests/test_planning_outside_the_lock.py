"""A planner that plans without I/O (no lease) plans a stored goal outside the write lock.

On SQLite every writing transaction of every process takes one lock in turn, so the planner
reads the goal without it, plans, and stores the plan in a transaction of its own, only if the
goal still waits for that revision; a second delivery planned at the same moment, or a cancel
meanwhile, leaves the first one's plan (or none) as the answer. PostgreSQL has no such lock:
there the planner plans inside the goal's transaction, as it always has, so these tests run on
a SQLite file only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import select

from plangate.bus import Delivery, Envelope
from plangate.cancellation import cancel_goal
from plangate.errors import PlanningFailed
from plangate.store import PlanRow, Store, audit
from plangate.store.goals import ensure_goal
from plangate.tools import load_tools
from planner_worker.handler import PlannerHandler
from planner_worker.planner import Draft, Planner
from schemas import Catalog, GoalSubmitted, Step
from tests.conftest import SEED_GOAL
from tests.support import audit_kinds

WAIT = 10.0
CATALOG = load_tools(["plangate.demo.tools"]).catalog()
STEPS = (Step(id="count", tool="ticket_count"), Step(id="sla", tool="sla_threshold"))
DELIVERY = Delivery("plangate.planner", "goal.submitted", {}, attempt=1, redelivered=False)


# The shared `store` fixture, on its SQLite file only.
pytestmark = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def stored_goal(store: Store, goal_id: str) -> GoalSubmitted:
    goal = GoalSubmitted(goal_id=goal_id, text=SEED_GOAL)
    with store.session() as session:
        ensure_goal(session, goal, {})
    return goal


def planner_handler(store: Store, planner: Planner) -> PlannerHandler:
    return PlannerHandler(store, planner, lease=None, catalog=lambda _session: CATALOG)


def plan_id_in(proposal: Envelope) -> str:
    return str(json.loads(proposal.body)["plan"]["plan_id"])


class WriterWhilePlanning:
    """Plans at once, after another thread's writing transaction had its turn (or not)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.other_wrote = False

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        def write() -> None:
            with self.store.session() as session:
                audit.append(session, "test.while_planning", actor="test")

        other = threading.Thread(target=write, daemon=True)
        other.start()
        other.join(WAIT)
        self.other_wrote = not other.is_alive()
        return Draft("count and SLA", STEPS, "test")


def test_planning_a_stored_goal_leaves_the_write_lock_to_other_transactions(store: Store) -> None:
    """Given a goal a client stored, and a planner that plans without I/O (no lease),
    When its goal.submitted is handled, and another thread writes while the planner plans,
    Then that write goes through at once, and the goal's plan is proposed.
    """
    goal = stored_goal(store, "goal-outside-the-lock")
    planner = WriterWhilePlanning(store)

    [proposal] = planner_handler(store, planner)(goal, DELIVERY)

    assert planner.other_wrote, "the other transaction waited for the planning to end"
    assert proposal.routing_key == "plan.proposed"
    assert audit_kinds(store, goal.goal_id) == ["goal.submitted", "goal.proposed"]


class FirstOneWaits:
    """The first draft waits until told to go on; any later one plans at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.planning = threading.Event()
        self.go_on = threading.Event()

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        self.calls += 1
        if self.calls == 1:
            self.planning.set()
            assert self.go_on.wait(WAIT)
        return Draft("count and SLA", STEPS, "test")


def delivered_twice_at_once(
    store: Store, goal: GoalSubmitted, planner: FirstOneWaits
) -> tuple[Envelope, Envelope]:
    """Hand the goal to the planner twice, the second time while the first one still plans;
    return the one answer of each delivery, the first delivery's first."""
    handler = planner_handler(store, planner)
    first: list[Sequence[Envelope]] = []
    slow = threading.Thread(target=lambda: first.append(handler(goal, DELIVERY)), daemon=True)
    slow.start()
    assert planner.planning.wait(WAIT)

    [second] = handler(goal, DELIVERY)
    planner.go_on.set()
    slow.join(WAIT)

    [[answer]] = first
    return answer, second


def test_two_deliveries_planned_at_once_store_one_plan_and_both_answer_it(store: Store) -> None:
    """Given a stored goal whose goal.submitted is delivered twice (a resend, a redelivery),
    When the first delivery's planning is still under way as the second one's plan is stored,
    Then the first one finds the goal planned and drops its plan (the goal's unique revision
    would refuse it too), and both deliveries answer with the one stored plan: one revision,
    one move to `proposed`.
    """
    goal = stored_goal(store, "goal-planned-twice")

    answer, second = delivered_twice_at_once(store, goal, FirstOneWaits())

    assert answer.routing_key == second.routing_key == "plan.proposed"
    assert plan_id_in(answer) == plan_id_in(second)
    with store.session() as session:
        plans = session.execute(select(PlanRow).where(PlanRow.goal_id == goal.goal_id)).all()
    assert len(plans) == 1
    assert audit_kinds(store, goal.goal_id) == ["goal.submitted", "goal.proposed"]


class CancelledWhilePlanning:
    """Plans at once, after an operator cancelled the goal meanwhile."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        self.calls += 1
        cancel_goal(self.store, goal.goal_id, "operator", "no longer needed")
        return Draft("count and SLA", STEPS, "test")


def test_a_goal_cancelled_while_it_is_planned_is_left_cancelled_without_a_plan(
    store: Store,
) -> None:
    """Given a stored goal, and an operator who cancels it while the planner plans it,
    When the planner comes to store the plan,
    Then nothing is stored or proposed, nothing fails, and the goal stays cancelled.
    """
    goal = stored_goal(store, "goal-cancelled-while-planned")
    planner = CancelledWhilePlanning(store)

    answers = planner_handler(store, planner)(goal, DELIVERY)

    assert list(answers) == []
    assert planner.calls == 1
    with store.session() as session:
        plans = session.execute(select(PlanRow).where(PlanRow.goal_id == goal.goal_id)).all()
    assert plans == []
    assert audit_kinds(store, goal.goal_id) == ["goal.submitted", "goal.cancelled"]


class FirstFailureWaits(FirstOneWaits):
    """Fails every goal; the first failure waits until told to go on."""

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        super().draft(goal, catalog)
        raise PlanningFailed(["no tool counts what this goal asks for"])


def test_two_deliveries_that_fail_at_once_store_one_failure_and_both_answer_it(
    store: Store,
) -> None:
    """Given a stored goal delivered twice, which the planner cannot plan,
    When the first delivery's planning is still under way as the second one's failure is
    stored, Then the first one stores nothing more and raises nothing: both answer with the
    one stored failure, and the goal moved to `plan_failed` once.
    """
    goal = stored_goal(store, "goal-failed-twice")

    answer, second = delivered_twice_at_once(store, goal, FirstFailureWaits())

    assert answer.routing_key == second.routing_key == "plan.failed"
    assert json.loads(answer.body)["reasons"] == json.loads(second.body)["reasons"]
    assert audit_kinds(store, goal.goal_id) == ["goal.submitted", "goal.plan_failed"]
