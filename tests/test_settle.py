"""A write that may or may not have happened stops its run for a person, who settles it.

The state an executor killed mid-call leaves behind (the step claimed, its lease run out, no
result) is made here by rewinding the store after a real run, then redelivering the plan's own
approval, as the reconciler would; `tests/test_distributed.py` does it with a real SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from approval_gate.settle import settle_step, unsettled_steps
from executor_worker.abandoned_steps import mark_abandoned
from executor_worker.engine import StepOutcome
from executor_worker.ledger import StepLedger
from executor_worker.run_end import end_run
from plangate.bus import Envelope
from plangate.cancellation import cancel_goal
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import (
    Conflict,
    Forbidden,
    InputInvalid,
    NotFound,
    OutcomeUnknown,
    ToolError,
)
from plangate.server import create_app
from plangate.server.reviewers import Reviewer, Reviewers
from plangate.signing import Signer
from plangate.store import StepRunRow
from plangate.store.audit_records import disagreement
from plangate.store.goals import goal_status
from plangate.tools import ToolContext, ToolRegistry, tool
from plangate.unknown_calls import since_text
from schemas import ExecutionPaused, Plan
from tests.fleet import serving_app
from tests.support import (
    HELD,
    audit_entries,
    audit_kinds,
    eventually,
    next_message,
    only_plan,
    rewind_to_mid_call,
    running_pipeline,
    sign_approval,
    step_runs,
    stored_approval,
    write_yaml,
)
from tests.test_review import cli_env, reviewer_env
from tests.test_review_api import call

REPO = str(Path(__file__).resolve().parents[1])
CHARGES: list[int] = []
RECEIPTS: list[str] = []
TOKEN = "settle-token-0123456789abcdef"


class Charge(BaseModel):
    """A card charge."""

    charge_id: str
    amount: int


@tool(effect="write")  # not idempotent: a second call charges the card twice
def charge_card(amount: int) -> Charge:
    """Charge the customer's card."""
    CHARGES.append(amount)
    return Charge(charge_id=f"ch_{len(CHARGES)}", amount=amount)


@tool(effect="write", idempotent=True)
def send_receipt(charge_id: str) -> str:
    """Email the receipt of a charge."""
    RECEIPTS.append(charge_id)
    return f"receipt for {charge_id}"


PLAYBOOK = {
    "playbooks": [
        {
            "name": "charge",
            "pattern": "^charge and receipt$",
            "summary": "Charge the card, then send the receipt",
            "steps": [
                {"id": "charge", "tool": "charge_card", "args": {"amount": 5}},
                {
                    "id": "receipt",
                    "tool": "send_receipt",
                    "args": {"charge_id": "${charge.charge_id}"},
                },
            ],
        }
    ]
}
APPROVE_ALL = {
    "rules": [{"name": "approve-all", "match": "true", "action": "approve", "reason": "a test"}]
}


@contextmanager
def billing_under(policy: dict[str, Any], settings: Settings, folder: Path) -> Iterator[Pipeline]:
    """The billing tools and playbook, decided by `policy`."""
    CHARGES.clear()
    RECEIPTS.clear()
    with running_pipeline(
        settings,
        tampers=True,  # a call cut off mid-way is staged by rewinding its step's row
        registry=ToolRegistry([charge_card, send_receipt]),
        playbook_file=write_yaml(folder / "playbook.yaml", PLAYBOOK),
        policy_file=write_yaml(folder / "policy.yaml", policy),
    ) as pipeline:
        yield pipeline


@pytest.fixture
def billing(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with billing_under(APPROVE_ALL, settings, tmp_path) as pipeline:
        yield pipeline


def cut_off_mid_charge(
    pipeline: Pipeline, approver: Reviewer | None = None
) -> tuple[Plan, ExecutionPaused]:
    """Run the plan, rewind it to `charge` cut off mid-call, and redeliver its approval.

    With `approver`, the plan is held first and they approve it. Returns the plan and the
    pause the executor announced.
    """
    goal_id = pipeline.submit("charge and receipt").goal_id
    if approver is not None:
        pipeline.wait_for(goal_id, HELD, timeout=5)
        pipeline.approve(
            only_plan(pipeline.store, goal_id).plan_id, approver.name, None, approver.roles
        )
    pipeline.wait_for(goal_id, timeout=5)
    plan = only_plan(pipeline.store, goal_id)
    rewind_to_mid_call(pipeline.store, plan, "charge")
    with pipeline.store.session() as session:  # the receipt had not been sent either
        session.delete(session.get_one(StepRunRow, (plan.plan_id, "receipt")))
    CHARGES.clear()
    RECEIPTS.clear()
    with pipeline.bus.observe() as observer:
        pipeline.bus.publish([Envelope.of(stored_approval(pipeline.store, plan.plan_id))])
        paused = next_message(observer, "execution.paused", goal_id)
    assert isinstance(paused, ExecutionPaused)
    return plan, paused


@contextmanager
def api_beside(pipeline: Pipeline, *reviewers: Reviewer) -> Iterator[str]:
    """Serve the API on the pipeline's store to `reviewers` (alice by default); yield its URL.

    The in-memory broker is shared within this process: the app publishes to the pipeline.
    """
    team = Reviewers(list(reviewers) or [Reviewer.with_token("alice", TOKEN)])
    settings = pipeline.settings.model_copy(update={"broker_url": "memory://"})
    with (
        Client(settings) as client,
        serving_app(create_app(settings, client=client, reviewers=team)) as url,
    ):
        yield url


def since_listed(pipeline: Pipeline, plan: Plan, step_id: str = "charge") -> datetime:
    """Return the `since` of the step's call unknown now, as a person reads it in the list."""
    [listed] = [
        s
        for s in unsettled_steps(pipeline.store)
        if (s.plan_id, s.step_id) == (plan.plan_id, step_id)
    ]
    assert listed.since is not None
    return listed.since


def test_a_write_cut_off_mid_call_stops_the_run_for_a_person(billing: Pipeline) -> None:
    """Given `charge` (not idempotent) cut off mid-call, and `receipt` needing its output,
    When the approval is delivered again,
    Then the card is not charged again: `charge` is unknown, `receipt` waits (pending, not
    skipped), and the goal needs attention with a reason that says how to settle it.
    """
    plan, paused = cut_off_mid_charge(billing)

    assert CHARGES == []
    assert RECEIPTS == []
    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}
    goal = billing.wait_for(plan.goal_id, {"needs_attention"}, timeout=5)
    assert goal.status == "needs_attention"
    assert paused.steps == {"charge": "unknown"}
    assert "may or may not have happened" in paused.reason
    said = "(the executor calling it died mid-call, or could not record its result; its tool"
    assert f"{said} is not idempotent" in paused.reason
    [waiting] = unsettled_steps(billing.store)
    assert waiting.since is not None
    # The command that settles the call unknown now, as it stands: it names that call.
    command = f"plangate review settle {plan.plan_id} charge --since {since_text(waiting.since)}"
    assert f"`{command} --happened` or `--not-happened`" in paused.reason
    assert (waiting.plan_id, waiting.step_id, waiting.tool) == (
        plan.plan_id,
        "charge",
        "charge_card",
    )


def test_settled_as_happened_the_run_resumes_without_charging_again(billing: Pipeline) -> None:
    """Given the run stopped on the unknown charge,
    When a person settles it as happened, giving its output,
    Then the run resumes: the receipt is sent for that charge, the card is not charged again,
    and the audit log names who settled it and what they found.
    """
    plan, _ = cut_off_mid_charge(billing)

    with billing.bus.observe() as observer:
        resumed = settle_step(
            billing.store,
            plan.plan_id,
            "charge",
            "alice",
            happened=True,
            output={"charge_id": "ch_1", "amount": 5},
            comment="the processor shows ch_1",
            unknown_since=since_listed(billing, plan),
        )
        billing.bus.publish(resumed)
        next_message(observer, "execution.completed", plan.goal_id)

    assert CHARGES == []
    assert RECEIPTS == ["ch_1"]
    assert step_runs(billing.store, plan.plan_id) == {"charge": "succeeded", "receipt": "succeeded"}
    [settled] = [e for e in audit_entries(billing.store, plan.goal_id) if e.kind == "step.settled"]
    assert settled.actor == "alice"
    assert settled.data["happened"] is True
    assert settled.data["comment"] == "the processor shows ch_1"
    assert unsettled_steps(billing.store) == []


def test_settled_as_not_happened_the_step_runs_once_more(billing: Pipeline) -> None:
    plan, _ = cut_off_mid_charge(billing)

    with billing.bus.observe() as observer:
        billing.bus.publish(
            settle_step(
                billing.store,
                plan.plan_id,
                "charge",
                "alice",
                happened=False,
                unknown_since=since_listed(billing, plan),
            )
        )
        next_message(observer, "execution.completed", plan.goal_id)

    assert CHARGES == [5]
    assert RECEIPTS == ["ch_1"]


def test_only_an_unknown_step_of_a_waiting_run_can_be_settled(billing: Pipeline) -> None:
    """Given a run stopped on its unknown charge,
    When someone settles a step that is not unknown, a step with no record, or a plan that
    does not exist, or settles the charge twice,
    Then each is refused saying why, and nothing is published.
    """
    plan, _ = cut_off_mid_charge(billing)
    checked = since_listed(billing, plan)  # the charge's: what each names as the call checked

    with pytest.raises(Conflict, match=r"step 'receipt' of plan .* is not unknown"):
        settle_step(
            billing.store, plan.plan_id, "receipt", "alice", happened=True, unknown_since=checked
        )
    with pytest.raises(NotFound, match="no step 'nosuchstep' on record"):
        settle_step(
            billing.store, plan.plan_id, "nosuchstep", "alice", happened=True, unknown_since=checked
        )
    with pytest.raises(NotFound):
        settle_step(
            billing.store, "no-such-plan", "charge", "alice", happened=True, unknown_since=checked
        )
    assert settle_step(
        billing.store, plan.plan_id, "charge", "alice", happened=True, unknown_since=checked
    )
    with pytest.raises(Conflict, match="is succeeded, not unknown"):
        settle_step(
            billing.store, plan.plan_id, "charge", "bob", happened=False, unknown_since=checked
        )


def run_cli(pipeline: Pipeline, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `plangate ARGS` on the pipeline's store as carol, a reviewer with a token."""
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        capture_output=True,
        text=True,
        env=cli_env(pipeline, tmp_path, **reviewer_env(tmp_path, "carol")),
        timeout=60,
        check=False,
    )


def test_the_cli_lists_unsettled_steps_and_settles_one(billing: Pipeline, tmp_path: Path) -> None:
    """Given a run stopped on its unknown charge,
    When `plangate review unsettled --json` and `review settle PLAN charge --since SINCE
    --happened` run, SINCE as listed,
    Then the list names the step, and settling it records the step as succeeded.
    """
    plan, _ = cut_off_mid_charge(billing)

    listed = run_cli(billing, tmp_path, "review", "unsettled", "--json")
    assert listed.returncode == 0, listed.stderr
    [view] = json.loads(listed.stdout)
    settled = run_cli(
        billing,
        tmp_path,
        *("review", "settle", plan.plan_id, "charge", "--since", view["since"], "--happened"),
        *("--output", '{"charge_id": "ch_9", "amount": 5}', "--json"),
    )

    assert (view["plan_id"], view["step_id"], view["tool"]) == (
        plan.plan_id,
        "charge",
        "charge_card",
    )
    assert settled.returncode == 0, settled.stderr
    assert json.loads(settled.stdout) == {
        "plan_id": plan.plan_id,
        "step_id": "charge",
        "happened": True,
        "resumed": True,
    }
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"
    shown = run_cli(billing, tmp_path, "status", plan.goal_id)
    # Not "succeeded in 387188 ms": the time from the call to the settling is no call's.
    assert "step charge (charge_card): succeeded (settled as happened by carol)" in shown.stdout


def test_the_unsettled_list_at_80_columns_keeps_each_value_whole_and_prints_the_command(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge,
    When `plangate review unsettled` prints to a pipe (80 columns),
    Then the plan, the since and the arguments are each whole on one line, and the command it
    prints settles the step as printed. (A table of six columns wrapped them into 6-character
    fragments: `"amoun / t"`, a date in 2-character pieces.)
    """
    plan, _ = cut_off_mid_charge(billing)

    listed = run_cli(billing, tmp_path, "review", "unsettled")

    assert listed.returncode == 0, listed.stderr
    [since] = [
        view["since"]
        for view in json.loads(run_cli(billing, tmp_path, "review", "unsettled", "--json").stdout)
    ]
    lines = listed.stdout.splitlines()
    assert f"plan {plan.plan_id} · step charge (charge_card), unknown since {since}" in lines
    assert any(line.endswith('args {"amount": 5}') for line in lines), listed.stdout
    [command] = [line.strip() for line in lines if line.strip().startswith("settle: ")]
    assert command == (
        f"settle: plangate review settle {plan.plan_id[:8]} charge --since {since} "
        "--happened | --not-happened"
    )
    settle = command.removeprefix("settle: plangate ").split(" --happened")[0].split()
    settled = run_cli(billing, tmp_path, *settle, "--happened")
    assert settled.returncode == 0, settled.stderr
    said = f"plan {plan.plan_id[:8]}: step charge settled as happened; the run resumes\n"
    assert settled.stdout == said  # what was recorded: it said only "settled"
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"


def test_the_unsettled_table_cuts_a_writes_long_arguments_saying_where_they_are_whole() -> None:
    """A write's arguments of 10 KB filled 2,135 lines of the table at 80 columns; the goal
    beside them is cut. Shown cut, with their length and where to read them whole (--json)."""
    from plangate.cli.settle import ARGS_SHOWN, _called_with

    said = _called_with({"idempotency_key": "k1", "args": {"memo": "x" * 10_000}})

    assert said.startswith('key k1 args {"memo": "xxx')
    assert len(said) < ARGS_SHOWN + 80
    assert said.endswith("characters; --json shows all)")


def test_the_cli_asks_what_was_found(billing: Pipeline, tmp_path: Path) -> None:
    plan, _ = cut_off_mid_charge(billing)

    result = run_cli(billing, tmp_path, "review", "settle", plan.plan_id, "charge")

    assert result.returncode == 2
    assert result.stderr.strip() == "error: say what you found: --happened or --not-happened"
    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}


@pytest.mark.parametrize("named_by", ["its whole id", "its first 8 characters"])
def test_the_api_lists_and_settles_an_unknown_step(billing: Pipeline, named_by: str) -> None:
    """Given a run stopped on its unknown charge and the API served beside the pipeline,
    When a reviewer lists the unsettled steps and settles the charge as not happened, naming
    its plan by its whole id or by its first 8 characters (as `status` prints it),
    Then the list has it, the settle answers 200, the run resumes and charges once more, and
    a second settle is 409. (Named short, it was settled, then answered 404 "no plan".)
    """
    plan, _ = cut_off_mid_charge(billing)
    given = plan.plan_id if named_by == "its whole id" else plan.plan_id[:8]
    with api_beside(billing) as url:
        status, listed = call(f"{url}/api/v1/reviews/unsettled", token=TOKEN)
        assert status == 200, listed
        assert [(s["plan_id"], s["step_id"]) for s in listed] == [(plan.plan_id, "charge")]

        settle_url = f"{url}/api/v1/reviews/{given}/steps/charge/settle"
        checked = listed[0]["since"]
        found = {"happened": False, "comment": "declined at the bank", "unknown_since": checked}
        status, outcome = call(settle_url, "POST", found, token=TOKEN)
        assert status == 200, outcome
        assert "the run resumes" in outcome["message"]
        assert billing.wait_for(plan.goal_id, timeout=5).status == "completed"
        assert CHARGES == [5]

        again = {"happened": True, "unknown_since": checked}
        status, again = call(settle_url, "POST", again, token=TOKEN)
        assert status == 409, again


HELD_FOR_FINANCE = {
    "rules": [
        {
            "name": "charges-need-finance",
            "match": "true",
            "action": "hold",
            "reason": "a charge",
            "requires_role": "finance",
        }
    ]
}
FINANCE = Reviewer.with_token("alice", TOKEN, ["finance"])


@pytest.fixture
def finance_billing(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """The billing plan, held by policy until a reviewer with the role `finance` approves it."""
    with billing_under(HELD_FOR_FINANCE, settings, tmp_path) as pipeline:
        yield pipeline


def test_settling_a_step_of_a_plan_held_for_a_role_needs_that_role(
    finance_billing: Pipeline,
) -> None:
    """Given a plan held for `finance`, approved by alice (finance), its charge cut off mid-call,
    When bob, a reviewer without the role, settles the charge (as happened, with the output
    the receipt will use; or as not happened, so the card is charged again),
    Then he is refused (Forbidden, naming the role), nothing changes, and alice may settle it.
    """
    plan, _ = cut_off_mid_charge(finance_billing, approver=FINANCE)
    checked = since_listed(finance_billing, plan)

    for happened, output in ((True, {"charge_id": "ch_bob", "amount": 999999}), (False, None)):
        with pytest.raises(Forbidden, match="requires the role 'finance' to settle a step of"):
            settle_step(
                finance_billing.store,
                plan.plan_id,
                "charge",
                "bob",
                happened=happened,
                output=output,
                unknown_since=checked,
            )
    assert step_runs(finance_billing.store, plan.plan_id) == {"charge": "unknown"}
    assert "step.settled" not in audit_kinds(finance_billing.store, plan.goal_id)

    resumed = settle_step(
        finance_billing.store,
        plan.plan_id,
        "charge",
        "alice",
        happened=False,
        roles=FINANCE.roles,
        unknown_since=checked,
    )
    assert resumed


def test_the_api_refuses_a_reviewer_without_the_role_a_settle_needs(
    finance_billing: Pipeline,
) -> None:
    plan, _ = cut_off_mid_charge(finance_billing, approver=FINANCE)
    with api_beside(finance_billing, FINANCE, Reviewer.with_token("bob", "b" * 40)) as url:
        settle_url = f"{url}/api/v1/reviews/{plan.plan_id}/steps/charge/settle"
        checked = since_listed(finance_billing, plan).isoformat()
        found = {
            "happened": True,
            "output": {"charge_id": "ch_bob", "amount": 999999},
            "unknown_since": checked,
        }

        status, refused = call(settle_url, "POST", found, token="b" * 40)

        assert status == 403, refused
        assert step_runs(finance_billing.store, plan.plan_id) == {"charge": "unknown"}
        found = {"happened": False, "unknown_since": checked}
        status, outcome = call(settle_url, "POST", found, token=TOKEN)
        assert status == 200, outcome
        assert finance_billing.wait_for(plan.goal_id, timeout=5).status == "completed"
        assert CHARGES == [5]


@tool(effect="write")
def wire_money(amount: int) -> str:
    """Send a wire, through a bank API that can time out after accepting it."""
    raise OutcomeUnknown("the bank did not answer within 30 s; the wire may have been sent")


def test_a_tool_that_cannot_tell_whether_it_acted_stops_the_run(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a write tool that raises OutcomeUnknown (a timeout after the request went out),
    When its plan runs,
    Then the step is unknown, not failed, and the goal waits for a person.
    """
    playbook = {
        "playbooks": [
            {
                "name": "wire",
                "pattern": "^wire$",
                "summary": "Wire the money",
                "steps": [{"id": "wire", "tool": "wire_money", "args": {"amount": 10}}],
            }
        ]
    }
    with running_pipeline(
        settings,
        registry=ToolRegistry([wire_money]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", playbook),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("wire").goal_id
        goal = pipeline.wait_for(goal_id, {"needs_attention", "failed", "completed"}, timeout=5)
        plan = only_plan(pipeline.store, goal_id)

    assert goal.status == "needs_attention", goal.status_reason
    assert step_runs(pipeline.store, plan.plan_id) == {"wire": "unknown"}


KEYS_GIVEN: list[str] = []


@tool(effect="read", idempotent=True)
def order_total(order: str) -> float:
    """Read an order's total: a whole number of euros is still a float (10.0)."""
    return 10.0


@tool(effect="write")
def charge_order(amount: float, context: ToolContext) -> str:
    """Charge an order's total through a bank that times out after accepting the request."""
    KEYS_GIVEN.append(context.idempotency_key)
    if len(KEYS_GIVEN) == 1:
        raise OutcomeUnknown("the bank did not answer within 30 s; the charge may have gone out")
    return "charged"


def test_a_write_in_doubt_is_listed_and_called_again_with_the_key_it_was_first_called_with(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a charge whose amount is a read's output of 10.0, cut off in doubt,
    When `review unsettled` lists it, and it is settled as not happened and called again,
    Then the list names the key the charge was called with, and the second call gets that key
    too: the list named another (the output, stored, read back as 10), so the bank, asked by
    it, knew no such charge, and the call made again under a third key charged twice.
    """
    playbook = {
        "playbooks": [
            {
                "name": "charge",
                "pattern": "^charge A-1$",
                "summary": "Charge the order's total",
                "steps": [
                    {"id": "total", "tool": "order_total", "args": {"order": "A-1"}},
                    {"id": "charge", "tool": "charge_order", "args": {"amount": "${total}"}},
                ],
            }
        ]
    }
    KEYS_GIVEN.clear()
    with running_pipeline(
        settings,
        registry=ToolRegistry([order_total, charge_order]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", playbook),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("charge A-1").goal_id
        pipeline.wait_for(goal_id, {"needs_attention"}, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        [listed] = unsettled_steps(pipeline.store)
        ran_again(pipeline, plan)

    assert listed.idempotency_key == KEYS_GIVEN[0]
    assert [KEYS_GIVEN[0]] * 2 == KEYS_GIVEN


@tool(effect="write", idempotent=True)
def close_ticket(ticket: str) -> str:
    """Close a ticket (its service is down today)."""
    raise ToolError("the ticket service answered 503")


def test_a_failure_beside_a_step_that_may_have_happened_still_waits_for_a_person(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan whose wire may or may not have gone out while another step failed,
    When it runs,
    Then the goal waits for a person rather than failing (a wire nobody looked at must not
    be forgotten, nor planned again); settled, the recorded failure stands and the goal fails.
    """
    playbook = {
        "playbooks": [
            {
                "name": "wire and close",
                "pattern": "^wire and close$",
                "summary": "Wire the money and close the ticket",
                "steps": [
                    {"id": "wire", "tool": "wire_money", "args": {"amount": 10}},
                    {"id": "close", "tool": "close_ticket", "args": {"ticket": "T-1"}},
                ],
            }
        ]
    }
    with running_pipeline(
        settings,
        registry=ToolRegistry([wire_money, close_ticket]),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", playbook),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("wire and close").goal_id
        waiting = pipeline.wait_for(goal_id, {"needs_attention", "failed", "completed"}, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        assert waiting.status == "needs_attention", waiting.status_reason
        assert step_runs(pipeline.store, plan.plan_id) == {"wire": "unknown", "close": "failed"}

        checked = since_listed(pipeline, plan, "wire")
        pipeline.bus.publish(
            settle_step(
                pipeline.store,
                plan.plan_id,
                "wire",
                "alice",
                happened=True,
                unknown_since=checked,
            )
        )
        done = pipeline.wait_for(goal_id, {"failed", "completed"}, timeout=5)

    assert done.status == "failed"
    assert "step 'close' failed" in (done.status_reason or "")


def test_a_forged_approval_leaves_a_waiting_run_waiting(billing: Pipeline) -> None:
    """Given a run stopped on its unknown charge,
    When a plan.approved signed by a key the executor does not trust arrives,
    Then the goal still waits for a person, and the charge is still listed to be settled.
    """
    plan, _ = cut_off_mid_charge(billing)
    forger = Signer(Ed25519PrivateKey.generate())

    billing.bus.publish([Envelope.of(sign_approval(forger, plan))])

    eventually(
        lambda: "approval.refused" in [e.kind for e in audit_entries(billing.store, plan.goal_id)],
        what="the forged approval refused",
    )
    assert (
        billing.wait_for(plan.goal_id, {"needs_attention"}, timeout=1).status == "needs_attention"
    )
    assert [s.step_id for s in unsettled_steps(billing.store)] == ["charge"]


def test_a_result_that_comes_back_after_its_claim_was_taken_over_replaces_nothing(
    billing: Pipeline,
) -> None:
    """Given a step claimed by an executor that then stopped answering (its claim taken over:
    the step is now unknown),
    When that executor's result finally arrives,
    Then the record stays unknown for the person, and the late result is in the audit log.
    """
    plan, _ = cut_off_mid_charge(billing)
    step = plan.steps[0]
    ledger = StepLedger(billing.store, plan)

    ledger.record(step, "succeeded", {"charge_id": "ch_late", "amount": 5}, None, attempt=1)

    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}
    [late] = [e for e in audit_entries(billing.store, plan.goal_id) if e.kind == "step.late_result"]
    assert (late.data["status"], late.data["recorded"]) == ("succeeded", "unknown")


def test_an_output_that_is_not_what_the_tool_returns_is_refused(billing: Pipeline) -> None:
    """Given a run stopped on its unknown charge, whose tool returns {charge_id, amount},
    When someone settles it as happened with an output of another shape,
    Then it is refused naming what is wrong, and the step is still waiting.
    """
    plan, _ = cut_off_mid_charge(billing)

    with pytest.raises(InputInvalid, match="that is not what charge_card returns"):
        settle_step(
            billing.store,
            plan.plan_id,
            "charge",
            "alice",
            happened=True,
            output={"id": 1},
            unknown_since=since_listed(billing, plan),
        )

    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}


def test_the_cli_refuses_an_output_that_is_not_strict_json(
    billing: Pipeline, tmp_path: Path
) -> None:
    plan, _ = cut_off_mid_charge(billing)

    result = run_cli(
        billing,
        tmp_path,
        "review",
        "settle",
        plan.plan_id,
        "charge",
        "--happened",
        "--output",
        '{"charge_id": "ch_1", "amount": NaN}',
        *("--since", since_listed(billing, plan).isoformat()),
    )

    assert result.returncode == 2
    assert result.stderr.startswith("error: --output is not valid JSON")
    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}


def test_the_cli_settles_a_step_of_a_plan_named_by_its_first_8_characters(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge,
    When `review settle` names the plan by the 8 characters `review unsettled` shows,
    Then the step is settled, as with the whole id (it said the plan had no such step).
    """
    plan, _ = cut_off_mid_charge(billing)

    since = since_listed(billing, plan).isoformat()
    settled = run_cli(
        billing,
        tmp_path,
        *("review", "settle", plan.plan_id[:8], "charge", "--since", since, "--happened"),
    )

    assert settled.returncode == 0, settled.stderr
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"


def test_a_write_found_cut_off_is_an_audit_entry_of_its_own(billing: Pipeline) -> None:
    """The step turned `unknown` in its row alone: its log said it was claimed, then nothing,
    and an auditor could not tell when it was found cut off, or by whom."""
    plan, _ = cut_off_mid_charge(billing)

    entries = audit_entries(billing.store, plan.goal_id)
    [entry] = [e for e in entries if e.kind == "step.unknown"]
    assert (entry.actor, entry.data["step_id"]) == ("executor", "charge")
    # What it was called with, as its first run's end said: what a person asks about.
    [ran] = [e for e in entries if e.kind == "step.succeeded" and e.data["step_id"] == "charge"]
    assert entry.data["args"] == ran.data["args"] == {"amount": 5}
    assert entry.data["idempotency_key"] == ran.data["idempotency_key"]
    assert entry.data["error"] == (
        "the executor calling it died mid-call, or could not record its result"
    )


def test_a_step_settled_as_not_happened_by_someone_else_meanwhile_is_a_conflict(
    billing: Pipeline,
) -> None:
    """Two reviewers settled the same step at once on two replicas: the one who came second
    was told the plan had no such step (404), though it was settled and ran again."""
    plan, _ = cut_off_mid_charge(billing)
    checked = since_listed(billing, plan)  # both had the same call listed
    assert settle_step(
        billing.store, plan.plan_id, "charge", "alice", happened=False, unknown_since=checked
    )

    with pytest.raises(Conflict, match="settled already"):
        settle_step(
            billing.store, plan.plan_id, "charge", "bob", happened=False, unknown_since=checked
        )


def test_a_settle_of_a_call_checked_before_the_step_ran_again_is_refused(
    billing: Pipeline,
) -> None:
    """Given a charge cut off mid-call, settled "did not happen" by alice, called again and cut
    off again (unknown once more),
    When bob settles it with the `unknown_since` of the call he checked (his page was open on
    the first one: a stale form, a second click, a client's retry),
    Then it is refused (409, saying the step was called again since), and the later call is
    settled only as listed now: the stale settle had the write run a third time.
    """
    plan, _ = cut_off_mid_charge(billing)
    checked, now = cut_off_again(billing, plan)

    with pytest.raises(Conflict, match="settled and called again since you looked"):
        settle_step(
            billing.store,
            plan.plan_id,
            "charge",
            "bob",
            happened=False,
            unknown_since=checked,
        )
    settled = settle_step(
        billing.store, plan.plan_id, "charge", "bob", happened=True, unknown_since=now
    )

    assert now != checked
    assert settled  # the run resumes: nothing else was unknown


def ran_again(pipeline: Pipeline, plan: Plan) -> datetime:
    """Settle the unknown charge "did not happen" as alice and wait for the run to complete.

    Returns the `since` of the call alice checked.
    """
    checked = since_listed(pipeline, plan)
    with pipeline.bus.observe() as observer:
        pipeline.bus.publish(
            settle_step(
                pipeline.store,
                plan.plan_id,
                "charge",
                "alice",
                happened=False,
                unknown_since=checked,
            )
        )
        next_message(observer, "execution.completed", plan.goal_id)
    return checked


def cut_off_again(pipeline: Pipeline, plan: Plan) -> tuple[datetime, datetime]:
    """Settle the unknown charge "did not happen" as alice; cut its second call off too.

    Returns the `since` of the call alice checked, and that of the call unknown now.
    """
    checked = ran_again(pipeline, plan)
    rewind_to_mid_call(pipeline.store, plan, "charge")  # the second call, cut off too
    with pipeline.bus.observe() as observer:
        pipeline.bus.publish([Envelope.of(stored_approval(pipeline.store, plan.plan_id))])
        next_message(observer, "execution.paused", plan.goal_id)
    return checked, since_listed(pipeline, plan)


def test_someone_without_the_role_learns_nothing_of_a_step_settled_meanwhile(
    finance_billing: Pipeline,
) -> None:
    """bob, without `finance`, came after alice had settled the charge: he was told it was
    settled already (a 409), not that he may not settle it (a 403)."""
    plan, _ = cut_off_mid_charge(finance_billing, approver=FINANCE)
    checked = since_listed(finance_billing, plan)
    settle_step(
        finance_billing.store,
        plan.plan_id,
        "charge",
        "alice",
        happened=False,
        roles=FINANCE.roles,
        unknown_since=checked,
    )

    with pytest.raises(Forbidden, match="requires the role 'finance' to settle a step of"):
        settle_step(
            finance_billing.store,
            plan.plan_id,
            "charge",
            "bob",
            happened=False,
            unknown_since=checked,
        )


def test_a_paused_runs_end_told_again_changes_nothing_and_raises_nothing(
    billing: Pipeline,
) -> None:
    """Given a run paused on its unknown charge (the goal needs attention),
    When its end is recorded again (the first commit landed, but the connection lost its
    answer, so the executor tries the end again),
    Then nothing more is emitted and nothing raised: the paused move was tried again and
    refused, failing the handler.
    """
    plan, _ = cut_off_mid_charge(billing)
    charge = StepOutcome("charge", "charge_card", "unknown", error="cut off")

    with billing.store.session() as session:
        goal = goal_status(session, plan.goal_id, lock=True)
        assert goal is not None
        assert goal.status == "needs_attention"
        told = end_run(session, plan.goal_id, plan.plan_id, goal, {"charge": charge})

    assert told == []
    assert (
        billing.wait_for(plan.goal_id, {"needs_attention"}, timeout=1).status == "needs_attention"
    )


def test_the_api_settles_a_cancelled_goal_s_write_saying_nothing_runs_again(
    billing: Pipeline,
) -> None:
    """Given a goal cancelled while its charge was being called by an executor that then died
    (its claim's lease run out: the sweep marks the write unknown),
    When a reviewer settles it through the API as not happened,
    Then it is recorded and the answer says the goal was cancelled: it said the charge "runs
    again" and that "other steps still wait to be settled", of a goal where nothing runs.
    """
    plan = cancelled_mid_charge(billing)
    with api_beside(billing) as url:
        settle_url = f"{url}/api/v1/reviews/{plan.plan_id}/steps/charge/settle"
        found = {"happened": False, "unknown_since": since_listed(billing, plan).isoformat()}
        status, outcome = call(settle_url, "POST", found, token=TOKEN)

    assert status == 200, outcome
    assert outcome["status"] == "cancelled"
    assert outcome["message"] == "alice settled charge: did not happen; its goal was cancelled"
    assert CHARGES == [5]  # the first run's only


def cancelled_mid_charge(pipeline: Pipeline) -> Plan:
    """Run the plan, rewind it to `charge` cut off mid-call, cancel the goal, and sweep it.

    The sweep marks the write its dead executor left in flight `unknown`, for a person.
    """
    goal_id = pipeline.submit("charge and receipt").goal_id
    pipeline.wait_for(goal_id, timeout=5)
    plan = only_plan(pipeline.store, goal_id)
    rewind_to_mid_call(pipeline.store, plan, "charge")
    cancel_goal(pipeline.store, goal_id, "carol", "wrong card")
    assert mark_abandoned(pipeline.store) == [f"{plan.plan_id}/charge"]
    return plan


def test_a_write_settled_not_happened_then_its_goal_cancelled_before_it_ran_reads_skipped(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge, which bob settles as not happened (its row
    cleared for the resumed run), its goal then cancelled before the run called it again (a
    cancel racing the settle, or a store a release before 2026-12 settled so),
    When `status` shows it,
    Then the charge is skipped, settled as not happened by bob: it read "running ... it
    finishes, and is recorded then", then "no outcome was recorded", though bob had said one.
    """
    plan, _ = cut_off_mid_charge(billing)
    checked = since_listed(billing, plan)
    settle_step(  # not sent on
        billing.store, plan.plan_id, "charge", "bob", happened=False, unknown_since=checked
    )
    cancel_goal(billing.store, plan.goal_id, "carol", "wrong card")

    shown = run_cli(billing, tmp_path, "status", plan.goal_id)

    assert shown.returncode == 0, shown.stderr
    assert "step charge (charge_card): skipped (settled as not happened by bob)" in shown.stdout
    assert "it finishes, and is recorded then" not in shown.stdout
    assert CHARGES == []


def test_a_cancelled_goal_s_write_settled_as_not_happened_reads_skipped_by_its_settler(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a goal cancelled while its charge was being called by an executor that died,
    When alice settles the charge as not happened,
    Then `status` shows it skipped, settled as not happened by alice (it read "running ...
    it finishes, and is recorded then", for good: its row was deleted, as if a resumed run
    would call it again), `--json` and the API agree, the log still holds to the rows, and the
    export's records carry the step.
    """
    plan = cancelled_mid_charge(billing)

    checked = since_listed(billing, plan)
    assert (
        settle_step(
            billing.store, plan.plan_id, "charge", "alice", happened=False, unknown_since=checked
        )
        == []
    )

    shown = run_cli(billing, tmp_path, "status", plan.goal_id)
    assert shown.returncode == 0, shown.stderr
    assert "step charge (charge_card): skipped (settled as not happened by alice)" in shown.stdout
    assert "did not happen, as alice found" in shown.stdout
    assert "it finishes, and is recorded then" not in shown.stdout
    as_json = json.loads(run_cli(billing, tmp_path, "status", plan.goal_id, "--json").stdout)
    assert as_json["steps"]["charge"] == "skipped"
    [charge, _] = as_json["results"]
    assert (charge["status"], charge["settled_by"]) == ("skipped", "alice")
    assert disagreement(billing.store) is None
    target = tmp_path / "audit.jsonl"
    exported = run_cli(billing, tmp_path, "audit", "export", "-o", str(target), "--records")
    assert exported.returncode == 0, exported.stderr
    records = [
        json.loads(line) for line in Path(f"{target}.records.jsonl").read_text().splitlines()
    ]
    [step] = [r for r in records if r["record"] == "step" and r["step_id"] == "charge"]
    assert step["status"] == "skipped"


def test_a_write_in_doubt_is_recorded_and_listed_with_its_arguments_and_key(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a goal cancelled mid-charge (its executor died: the sweep marks it unknown),
    When a person lists the steps to settle, then settles it,
    Then the list, and the `step.unknown` and `step.settled` entries, carry the charge's
    arguments and idempotency key, as its `step.succeeded` had: the entries in doubt named the
    plan, step and tool alone, and the person could not ask the processor about the charge.
    """
    plan = cancelled_mid_charge(billing)
    succeeded = [
        e for e in audit_entries(billing.store, plan.goal_id) if e.kind == "step.succeeded"
    ]
    [ran] = [e.data for e in succeeded if e.data["step_id"] == "charge"]

    listed = run_cli(billing, tmp_path, "review", "unsettled", "--json")
    checked = since_listed(billing, plan)
    settle_step(
        billing.store, plan.plan_id, "charge", "alice", happened=True, unknown_since=checked
    )

    assert listed.returncode == 0, listed.stderr
    [view] = json.loads(listed.stdout)
    assert (view["args"], view["idempotency_key"]) == ({"amount": 5}, ran["idempotency_key"])
    entries = audit_entries(billing.store, plan.goal_id)
    for kind in ("step.unknown", "step.settled"):
        [entry] = [e for e in entries if e.kind == kind]
        said = (entry.data["args"], entry.data["idempotency_key"])
        assert said == (ran["args"], ran["idempotency_key"]), kind
