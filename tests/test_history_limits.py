"""Limits over history: a rule that counts what was already approved, decided one at a time.

Twenty goals fired at once at two gate workers on PostgreSQL (the advisory lock is the
subject), under a rule that auto-approves a page only while fewer than 3 were approved this
hour: exactly 3 run, 17 wait for a person.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from approval_gate.policy import Policy
from plangate.client import Client
from plangate.config import Settings
from plangate.store import DecisionRow, GoalRow, open_store
from plangate.tools import ToolRegistry, tool
from schemas import Plan, Step
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.support import HELD, running_pipeline, write_yaml

CAPPED = """\
rules:
  - name: page-under-the-cap
    match: >-
      plan.steps.exists(s, s.tool == "notify_oncall")
      && history.count("notify_oncall", "1h") < 3
    action: approve
    reason: fewer than 3 pages this hour
  - name: hold-the-rest
    match: 'true'
    action: hold
    reason: a person decides past the cap
"""


@pytest.mark.redis
@pytest.mark.postgres
def test_twenty_goals_at_once_against_a_cap_of_three_pages_an_hour(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given two gate workers, a planner and an executor on Redis and PostgreSQL, and a rule
    approving a page while fewer than 3 were approved in the last hour,
    When 20 seed goals are submitted at once from 20 threads,
    Then exactly 3 are approved by that rule and complete, and 17 are held.
    """
    (tmp_path / "policy.yaml").write_text(CAPPED)
    fleet = Fleet(
        redis_url,
        postgres_database_url,
        tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"), **FAST_SWEEPS},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    for stage in ("planner", "gate", "gate", "executor"):
        fleet.start(stage)
    try:
        with Client(fleet.settings()) as client, ThreadPoolExecutor(20) as pool:
            goal_ids = list(
                pool.map(lambda n: client.submit(f"{SEED_GOAL} #{n}").goal_id, range(20))
            )
        store = open_store(postgres_database_url, upgrade=False)
        deadline = time.monotonic() + 60
        while True:
            with store.session() as session:
                states = Counter(
                    session.execute(select(GoalRow.status).where(GoalRow.id.in_(goal_ids)))
                    .scalars()
                    .all()
                )
                rules = Counter(
                    session.execute(
                        select(DecisionRow.rule).where(
                            DecisionRow.goal_id.in_(goal_ids), DecisionRow.stage == "policy"
                        )
                    )
                    .scalars()
                    .all()
                )
            if states["completed"] + states["held"] == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        store.close()
    finally:
        fleet.stop_all()

    assert rules == {"page-under-the-cap": 3, "hold-the-rest": 17}, (rules, fleet.logs())
    assert states == {"completed": 3, "held": 17}


def test_history_sum_adds_an_argument_among_goals_sharing_a_metadata_key() -> None:
    """`history.sum(tool, arg, window, key)` sums the argument over approved plans whose goal
    has this goal's value of `key`; a rule using it without a history holds (fail closed)."""
    policy = Policy.from_text(
        "rules:\n  - name: refunds-under-500\n"
        '    match: \'history.sum("refund", "amount", "1d", "customer") < 500.0\'\n'
        "    action: approve\n    reason: under the day's cap\n"
    )
    plan = Plan(plan_id="p", goal_id="g", revision=1, steps=(Step(id="r", tool="refund"),))

    class Approved:
        """Three approved refunds: 300 and 150 for acme, 900 for globex."""

        def functions(self) -> dict[str, object]:
            rows = [(300, "acme"), (150, "acme"), (900, "globex")]

            def total(_h: object, tool: str, arg: str, window: str, key: str) -> float:
                return float(sum(amount for amount, who in rows if who == "acme"))

            return {"sum": total}

    assert policy.decide(plan, {}, "", {"customer": "acme"}, Approved()).action == "approve"
    assert policy.decide(plan, {}, "", {"customer": "acme"}).action == "hold"
    assert policy.reads_history


class RefundRequest(BaseModel):
    """A customer's refund request."""

    amount: float


@tool(effect="read", idempotent=True)
def refund_request(request_id: str) -> RefundRequest:
    """Read a refund request: 420 whichever it is."""
    return RefundRequest(amount=420.0)


@tool(effect="write", idempotent=True)
def refund(amount: float) -> str:
    """Refund `amount`."""
    return f"refunded {amount}"


REFUND_PLAYBOOK = {
    "playbooks": [
        {
            "name": "refund-request",
            "pattern": "^refund request",
            "steps": [
                {"id": "req", "tool": "refund_request", "args": {"request_id": "RR-1"}},
                {"id": "pay", "tool": "refund", "args": {"amount": "${req.amount}"}},
            ],
        },
        {
            "name": "refund-if-large",
            "pattern": "^refund if large",
            "steps": [
                {"id": "req", "tool": "refund_request", "args": {"request_id": "RR-2"}},
                {
                    "id": "pay",
                    "tool": "refund",
                    "args": {"amount": "${req.amount}"},
                    "when": "steps.req.output.amount > 10000.0",
                },
            ],
        },
    ]
}
CAPPED_REFUNDS = {
    "rules": [
        {
            "name": "refunds-under-the-day-s-cap",
            "match": 'history.sum("refund", "amount", "1d", "customer") < 1000.0',
            "action": "approve",
            "reason": "under the customer's cap for the day",
        }
    ]
}


def test_history_sum_counts_an_amount_a_read_filled_in_at_what_it_ran_with(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a refund whose amount a read fills in (`${req.amount}`: text in the plan),
    approved under a day's cap and run with 420,
    When the customer's next refunds are decided,
    Then history.sum counts 420 for each that ran: the fourth is held (1260 already).
    It read the text "${req.amount}" and failed every later decision on the customer's refunds
    for the whole window.
    """
    with running_pipeline(
        settings,
        registry=ToolRegistry([refund_request, refund]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", REFUND_PLAYBOOK),
        policy_file=write_yaml(tmp_path / "policy.yaml", CAPPED_REFUNDS),
    ) as pipeline:
        ended = []
        for n in range(4):
            goal_id = pipeline.submit(f"refund request {n}", metadata={"customer": "c2"}).goal_id
            ended.append(pipeline.wait_for(goal_id, {"completed", *HELD}, timeout=10))

    assert [goal.status for goal in ended] == ["completed"] * 3 + ["held"], [
        goal.status_reason for goal in ended
    ]
    assert "could not be evaluated" not in (ended[3].status_reason or "")


def test_history_sum_counts_nothing_for_a_referring_step_that_ended_without_a_call(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a refund whose amount a read fills in, skipped by its `when`, When the customer's
    next refund is decided, Then the skipped one adds nothing and it is approved: the sum read
    its text and failed for the whole window."""
    with running_pipeline(
        settings,
        registry=ToolRegistry([refund_request, refund]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", REFUND_PLAYBOOK),
        policy_file=write_yaml(tmp_path / "policy.yaml", CAPPED_REFUNDS),
    ) as pipeline:
        skipped = pipeline.submit("refund if large", metadata={"customer": "c3"}).goal_id
        assert pipeline.wait_for(skipped, timeout=10).status == "completed"
        goal_id = pipeline.submit("refund request 9", metadata={"customer": "c3"}).goal_id
        goal = pipeline.wait_for(goal_id, {"completed", *HELD}, timeout=10)

    assert goal.status == "completed", goal.status_reason
