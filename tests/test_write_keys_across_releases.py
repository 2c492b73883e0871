"""A write in doubt is listed, settled and called again under the key it was called with.

The key's formula changed between releases (of the plan's hash until 060cb95, of the goal, the
step and its arguments since), and may change again. Since revision 0015 the claim records the
key its call passed; the list of writes in doubt, a settle's audit entry and the call made
again take that one, never the reading release's formula. A write claimed before 0015 has no
key on record: the list names each key a release could have called it with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from approval_gate.settle import settle_step, unsettled_steps
from plangate.bus import Envelope
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import OutcomeUnknown
from plangate.store import StepRunRow
from plangate.tools import ToolContext, ToolRegistry, tool
from schemas import Plan, Step
from schemas.hashing import plan_hash, sha256_hex
from tests.support import (
    audit_entries,
    next_message,
    only_plan,
    rewind_to_mid_call,
    running_pipeline,
    stored_approval,
    write_yaml,
)

KEYS_GIVEN: list[str] = []


@tool(effect="read", idempotent=True)
def invoice_total(invoice: str) -> float:
    """Read an invoice's total."""
    return 12.5


@tool(effect="write")  # not idempotent: a second call without the key pays twice
def pay_invoice(amount: float, context: ToolContext) -> str:
    """Pay an invoice through a bank that times out, the first time, after taking the order."""
    KEYS_GIVEN.append(context.idempotency_key)
    if len(KEYS_GIVEN) == 1:
        raise OutcomeUnknown("the bank did not answer within 30 s; the payment may have gone out")
    return "paid"


PLAYBOOK = {
    "playbooks": [
        {
            "name": "pay",
            "pattern": "^pay I-7$",
            "summary": "Pay the invoice's total",
            "steps": [
                {"id": "total", "tool": "invoice_total", "args": {"invoice": "I-7"}},
                {"id": "pay", "tool": "pay_invoice", "args": {"amount": "${total}"}},
            ],
        }
    ]
}
APPROVE_ALL = {
    "rules": [{"name": "approve-all", "match": "true", "action": "approve", "reason": "a test"}]
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def billing(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[Pipeline]:
    """The invoice tools and playbook, every plan approved, on SQLite or PostgreSQL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database_url")
        settings = settings.model_copy(update={"database_url": url})
    KEYS_GIVEN.clear()
    with running_pipeline(
        settings,
        tampers=True,  # the pre-0015 claim is staged by rewriting its row
        registry=ToolRegistry([invoice_total, pay_invoice]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", PLAYBOOK),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        yield pipeline


def settled_not_happened(pipeline: Pipeline, plan: Plan) -> dict[str, Any]:
    """Settle the payment "did not happen" as alice, wait for the run's end; return the entry."""
    [listed] = unsettled_steps(pipeline.store)
    assert listed.since is not None
    with pipeline.bus.observe() as observer:
        settled = settle_step(
            pipeline.store, plan.plan_id, "pay", "alice", happened=False, unknown_since=listed.since
        )
        pipeline.bus.publish(settled)
        next_message(observer, "execution.completed", plan.goal_id)
    [entry] = [e for e in audit_entries(pipeline.store, plan.goal_id) if e.kind == "step.settled"]
    data: dict[str, Any] = entry.data
    return data


def another_formula(goal_id: str, step: Step, args: dict[str, Any]) -> str:
    """A key formula other than this release's, as a later release may bring."""
    return sha256_hex(json.dumps(["a later release", goal_id, step.id, args]).encode())[:40]


def test_a_write_in_doubt_keeps_the_key_it_was_called_with_whatever_formula_reads_it(
    billing: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a payment cut off in doubt, its claim having recorded the key its call passed,
    When a release whose key formula differs lists it, a person settles it as not happened,
    and the run resumes,
    Then the list, the settle's audit entry and the call made again all name the first call's
    key: made again by the new formula, the list named a key the bank never saw (so it said
    "no such payment") and the payment went out a second time under it.
    """
    goal_id = billing.submit("pay I-7").goal_id
    billing.wait_for(goal_id, {"needs_attention"}, timeout=5)
    plan = only_plan(billing.store, goal_id)
    first = KEYS_GIVEN[0]

    monkeypatch.setattr("plangate.step_calls.idempotency_key", another_formula)
    monkeypatch.setattr("executor_worker.plan_run.idempotency_key", another_formula)
    [listed] = unsettled_steps(billing.store)
    entry = settled_not_happened(billing, plan)

    assert listed.idempotency_key == first
    assert listed.candidate_keys == ()
    assert entry["idempotency_key"] == first
    assert KEYS_GIVEN.copy() == [first, first]


def test_a_write_claimed_before_0015_is_listed_with_each_key_a_release_could_have_used(
    billing: Pipeline,
) -> None:
    """Given a payment an executor of release 011f34a (schema 0013) was calling when it was
    killed: its claim recorded no key, and that release passed sha256(plan hash/step id),
    When this release finds it in doubt, lists it, and a person settles it as not happened,
    Then the list and the settle's entry name that key as the one releases before 060cb95
    made, beside this release's, which the call made again gets: the list named this
    release's alone, which the bank never saw.
    """
    goal_id = billing.submit("pay I-7").goal_id
    billing.wait_for(goal_id, {"needs_attention"}, timeout=5)
    plan = only_plan(billing.store, goal_id)
    [listed] = unsettled_steps(billing.store)
    this_release = listed.idempotency_key
    # The row as 011f34a's claim wrote it (`git show 011f34a:executor_worker/ledger.py`, lines
    # 129-141: status running, attempt 1, a lease, no key), its lease run out: the executor
    # was killed mid-call, before the upgrade.
    rewind_to_mid_call(billing.store, plan, "pay")
    with billing.store.session() as session:
        session.get_one(StepRunRow, (plan.plan_id, "pay")).idempotency_key = None
    with billing.bus.observe() as observer:
        billing.bus.publish([Envelope.of(stored_approval(billing.store, plan.plan_id))])
        next_message(observer, "execution.paused", goal_id)
    called_before = len(KEYS_GIVEN)
    # 011f34a's executor_worker/engine.py, line 54: the key of the plan's hash and the step.
    old_key = sha256_hex(f"{plan_hash(plan)}/pay".encode())[:40]

    [in_doubt] = unsettled_steps(billing.store)
    entry = settled_not_happened(billing, plan)

    keys = [(c.key, c.made_by) for c in in_doubt.candidate_keys]
    assert keys[0] == (old_key, "releases before 060cb95 (all at 0013 or older)")
    assert keys[-1][0] == this_release
    assert keys[-1][1].endswith("releases since 370429d, this one too")
    assert entry["candidate_keys"][0] == {"key": old_key, "made_by": keys[0][1]}
    assert KEYS_GIVEN[called_before:] == [this_release]
