"""The gate decides a plan outside the write lock, unless its policy reads the history.

On SQLite every writing transaction of every process takes one lock in turn. A policy that
reads no history decides on the plan, the tools and the goal's words, which no transaction
changes, so the gate decides before its writing transaction; a policy that counts earlier
decisions (`history.count`) decides inside it, one decision at a time per tool. Each test runs
on SQLite and on PostgreSQL (where there is no such lock, and only the outcome is checked),
but those of what may happen between the early decision and its record: that path is SQLite's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from approval_gate.handler import GateHandler
from approval_gate.policy import Policy
from plangate.bus import Delivery, Envelope
from plangate.cancellation import cancel_goal
from plangate.signing import Signer
from plangate.store import DecisionRow, Store, audit
from plangate.store.goals import ensure_goal
from plangate.tools import load_tools
from planner_worker.handler import PlannerHandler
from planner_worker.planner import Draft
from schemas import Catalog, Decision, GoalSubmitted, PlanProposed, Step, decode_message
from tests.conftest import SEED_GOAL
from tests.support import audit_kinds

WAIT = 10.0
CATALOG = load_tools(["plangate.demo.tools"]).catalog()
STEPS = (Step(id="count", tool="ticket_count"), Step(id="sla", tool="sla_threshold"))
APPROVE_READS = """\
rules:
  - name: reads
    match: plan.steps.all(s, s.effect == "read")
    action: approve
    reason: reads only
"""
APPROVE_UNDER_A_CAP = """\
rules:
  - name: reads-under-a-cap
    match: 'history.count("ticket_count", "1h") < 100'
    action: approve
    reason: fewer than 100 counts this hour
"""


class ReadsOnly:
    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        return Draft("count and SLA", STEPS, "test")


def proposed_plan(store: Store, goal_id: str) -> PlanProposed:
    """Store a goal and its plan (as a client and a planner would); return the proposal."""
    goal = GoalSubmitted(goal_id=goal_id, text=SEED_GOAL)
    with store.session() as session:
        ensure_goal(session, goal, {})
    planner = PlannerHandler(store, ReadsOnly(), lease=None, catalog=lambda _s: CATALOG)
    delivery = Delivery("plangate.planner", "goal.submitted", {}, attempt=1, redelivered=False)
    [proposal] = planner(goal, delivery)
    message = decode_message(proposal.body, "application/json", "utf-8", proposal.headers)
    assert isinstance(message, PlanProposed)
    return message


class GateWatchingTheLock(GateHandler):
    """A gate that, as its policy decides, lets another thread write (or wait trying)."""

    def __init__(self, store: Store, policy_text: str) -> None:
        self.policy = Policy.from_text(policy_text, source="test.yaml")
        signer = Signer(Ed25519PrivateKey.generate())
        ttl = timedelta(hours=1)
        super().__init__(store, self.policy, signer, ttl, catalog=lambda _s: CATALOG)
        self.store = store
        self.other_wrote: list[bool] = []
        self.writers: list[threading.Thread] = []

    def join_writers(self) -> None:
        """Wait for the other writes (one may wait for the gate's transaction to commit)."""
        for writer in self.writers:
            writer.join(WAIT)

    def _decide(self, *args: Any, **kwargs: Any) -> Decision:
        def write() -> None:
            with self.store.session() as session:
                audit.append(session, "test.while_deciding", actor="test")

        other = threading.Thread(target=write, daemon=True)
        self.writers.append(other)
        other.start()
        other.join(0.5 if self.policy.reads_history else WAIT)
        self.other_wrote.append(not other.is_alive())
        return super()._decide(*args, **kwargs)


GATE_DELIVERY = Delivery("plangate.gate", "plan.proposed", {}, attempt=1, redelivered=False)


def test_a_policy_without_history_decides_while_other_transactions_write(store: Store) -> None:
    """Given a proposed plan, and a policy that reads no history,
    When the gate decides, and another thread writes meanwhile,
    Then that write goes through at once, and the plan is approved as the policy said.
    """
    proposal = proposed_plan(store, "goal-decided-outside")
    gate = GateWatchingTheLock(store, APPROVE_READS)

    [approved] = gate(proposal, GATE_DELIVERY)

    assert gate.other_wrote == [True], "the other transaction waited for the decision"
    assert approved.routing_key == "plan.approved"
    assert json.loads(approved.body)["plan"]["plan_id"] == proposal.plan.plan_id
    kinds = audit_kinds(store, "goal-decided-outside")
    assert kinds == ["goal.submitted", "goal.proposed", "goal.approved"]


def test_a_policy_that_reads_history_decides_inside_the_writing_transaction(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """Given a proposed plan, and a policy that counts this hour's earlier decisions,
    When the gate decides,
    Then it decides inside its writing transaction (on SQLite another writer waits for it:
    two gates never both count the same history), and the plan is approved.
    """
    proposal = proposed_plan(store, "goal-decided-inside")
    gate = GateWatchingTheLock(store, APPROVE_UNDER_A_CAP)

    [approved] = gate(proposal, GATE_DELIVERY)
    gate.join_writers()

    if "sqlite" in request.node.callspec.id:
        assert gate.other_wrote == [False], "another writer got in while the history was read"
    assert approved.routing_key == "plan.approved"


class GateMeanwhile(GateHandler):
    """A gate during whose decision (outside the lock) `meanwhile` runs once."""

    def __init__(self, store: Store, meanwhile: Callable[[], object]) -> None:
        policy = Policy.from_text(APPROVE_READS, source="test.yaml")
        signer = Signer(Ed25519PrivateKey.generate())
        super().__init__(store, policy, signer, timedelta(hours=1), catalog=lambda _s: CATALOG)
        self.meanwhile: Callable[[], object] | None = meanwhile

    def _decide(self, *args: Any, **kwargs: Any) -> Decision:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return super()._decide(*args, **kwargs)


def decisions_of(store: Store, plan_id: str) -> list[str]:
    with store.session() as session:
        rows = session.execute(select(DecisionRow.action).where(DecisionRow.plan_id == plan_id))
        return list(rows.scalars())


ON_SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the read-first path


@ON_SQLITE
def test_a_goal_cancelled_while_the_gate_decides_gets_no_decision(store: Store) -> None:
    """Given a proposed plan, and an operator who cancels its goal while the gate decides,
    When the gate comes to record its decision,
    Then nothing is recorded or sent, nothing fails, and the goal stays cancelled.
    """
    proposal = proposed_plan(store, "goal-cancelled-while-decided")
    cancel = partial(cancel_goal, store, "goal-cancelled-while-decided", "operator", "stop")
    gate = GateMeanwhile(store, cancel)

    answers = gate(proposal, GATE_DELIVERY)

    assert list(answers) == []
    assert decisions_of(store, proposal.plan.plan_id) == []
    kinds = audit_kinds(store, "goal-cancelled-while-decided")
    assert kinds == ["goal.submitted", "goal.proposed", "goal.cancelled"]


@ON_SQLITE
def test_two_gates_deciding_one_plan_at_once_record_one_decision(store: Store) -> None:
    """Given a proposed plan delivered to two gates, the second deciding and recording while
    the first one decides outside the lock,
    When the first comes to record its decision,
    Then it records none and answers with the second one's: one decision, one approval move.
    (The first finds the second's decision in its writing transaction; the unique decision per
    plan and stage would refuse a second one too, so the single move is what shows it.)
    """
    proposal = proposed_plan(store, "goal-decided-twice")
    other = GateMeanwhile(store, lambda: None)
    second: list[Sequence[Envelope]] = []
    first = GateMeanwhile(store, lambda: second.append(other(proposal, GATE_DELIVERY)))

    [answer] = first(proposal, GATE_DELIVERY)

    [[other_answer]] = second
    assert answer.routing_key == other_answer.routing_key == "plan.approved"
    assert json.loads(answer.body)["plan"]["plan_id"] == proposal.plan.plan_id
    assert decisions_of(store, proposal.plan.plan_id) == ["approve"]
    kinds = audit_kinds(store, "goal-decided-twice")
    assert kinds == ["goal.submitted", "goal.proposed", "goal.approved"]
