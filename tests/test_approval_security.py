"""Nothing runs that was not approved: the executor checks every approval before any tool."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy import select, text

from plangate.bus import Envelope
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.signing import Signer
from plangate.signing_keys import load_or_create_signer
from plangate.store import ApprovalRow
from schemas import Plan, PlanApproved, SignedEnvelope, utcnow
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_entries,
    dead_letters,
    eventually,
    first_envelope,
    next_message,
    only_plan,
    running_pipeline,
    sign_approval,
    step_runs,
    stored_approval,
)

# Approvals are forged and rows changed behind plangate's back: its records may disagree.
pytestmark = pytest.mark.tampers


@pytest.fixture
def held_plan(pipeline: Pipeline) -> Plan:
    """The seed goal's plan, held for a person (it pages on-call)."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    return only_plan(pipeline.store, goal_id)


@pytest.fixture
def gate_signer(pipeline: Pipeline) -> Signer:
    """The gate's own signing key, which the executor trusts."""
    return load_or_create_signer(pipeline.settings)


def deliver(pipeline: Pipeline, message: PlanApproved) -> None:
    pipeline.bus.publish([Envelope.of(message)])


def assert_refused_and_still_held(pipeline: Pipeline, plan: Plan, reason: str) -> None:
    """The forgery is a dead letter saying why, audited; the goal is held as it was."""
    (letter,) = dead_letters(pipeline)
    assert letter.routing_key == "plan.approved"
    assert reason in letter.reason
    refused = [
        e for e in audit_entries(pipeline.store, plan.goal_id) if e.kind == "approval.refused"
    ]
    assert reason in refused[0].data["reason"]
    assert pipeline.wait_for(plan.goal_id, HELD, timeout=1).status == "held"
    assert_nothing_ran(pipeline, plan)


def assert_nothing_ran(pipeline: Pipeline, plan: Plan) -> None:
    assert step_runs(pipeline.store, plan.plan_id) == {}
    kinds = [entry.kind for entry in audit_entries(pipeline.store, plan.goal_id)]
    assert not [kind for kind in kinds if kind.startswith("step.")]
    assert read_notifications() == []


def test_plan_changed_by_one_character_after_approval_runs_nothing(
    pipeline: Pipeline, held_plan: Plan, gate_signer: Signer
) -> None:
    """Given a genuine approval of the held seed plan,
    When the plan it travels with has one character of the page's text changed,
    Then no tool runs, no page is sent, the message is a dead letter saying the plan differs,
    and the goal stays held: a person's genuine approval afterwards still runs the plan once.
    """
    approved = sign_approval(gate_signer, held_plan)
    notify = held_plan.step("notify")
    message = notify.args["message"]
    edited_step = notify.model_copy(update={"args": {"message": "t" + message[1:]}})
    edited = held_plan.model_copy(
        update={"steps": tuple(edited_step if s.id == "notify" else s for s in held_plan.steps)}
    )
    assert len(json.dumps(edited.model_dump())) == len(json.dumps(held_plan.model_dump()))

    deliver(pipeline, approved.model_copy(update={"plan": edited}))

    assert_refused_and_still_held(pipeline, held_plan, "the plan differs from the one approved")
    pipeline.approve(held_plan.plan_id, "alice")
    assert pipeline.wait_for(held_plan.goal_id, timeout=5).status == "completed"
    assert [n["message"] for n in read_notifications()] == ["Ticket count 128 exceeded SLA 100"]


def test_approval_signed_by_an_untrusted_key_runs_nothing(
    pipeline: Pipeline, held_plan: Plan
) -> None:
    """Given an approval of exactly the held plan, signed by a key the executor does not trust,
    When it is delivered to the executor,
    Then no tool runs, the message is a dead letter naming the unknown key, the goal stays held.
    """
    rogue = Signer(Ed25519PrivateKey.generate())

    deliver(pipeline, sign_approval(rogue, held_plan))

    assert_refused_and_still_held(pipeline, held_plan, f"signed by unknown key {rogue.key_id}")


def test_expired_approval_is_refused(
    pipeline: Pipeline, held_plan: Plan, gate_signer: Signer
) -> None:
    """Given an approval of the held plan by the gate's key that expired an hour ago,
    When it is delivered to the executor,
    Then no tool runs, the message is a dead letter saying it expired, the goal stays held.
    """
    stale = sign_approval(
        gate_signer, held_plan, ttl=timedelta(hours=1), issued_ago=timedelta(hours=2)
    )

    deliver(pipeline, stale)

    assert_refused_and_still_held(pipeline, held_plan, "the approval expired at")


def test_approval_whose_expiry_was_extended_after_signing_is_refused(
    pipeline: Pipeline, held_plan: Plan, gate_signer: Signer
) -> None:
    """Given an expired approval whose payload was edited to expire next year, signature kept,
    When it is delivered to the executor,
    Then no tool runs, the message is a dead letter saying the signature does not match the
    payload, and the goal stays held.
    """
    stale = sign_approval(
        gate_signer, held_plan, ttl=timedelta(hours=1), issued_ago=timedelta(hours=2)
    )
    payload = json.loads(base64.b64decode(stale.approval.payload))
    payload["expires_at"] = "2099-01-01T00:00:00Z"
    forged = SignedEnvelope(
        payload_type=stale.approval.payload_type,
        payload=base64.b64encode(json.dumps(payload).encode()).decode(),
        signatures=stale.approval.signatures,
    )

    deliver(pipeline, stale.model_copy(update={"approval": forged}))

    assert_refused_and_still_held(pipeline, held_plan, "does not match the payload")


def test_approval_reused_for_a_different_plan_is_refused(pipeline: Pipeline) -> None:
    """Given two held seed goals, the first approved by alice and completed (one page),
    When the first plan's approval is delivered with the second goal's plan,
    Then the second plan runs nothing, the message is a dead letter saying the plan differs,
    the second goal stays held, and one page was sent in all.
    """
    first = pipeline.submit(SEED_GOAL).goal_id
    second = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(first, HELD, timeout=5)
    pipeline.wait_for(second, HELD, timeout=5)
    first_plan = only_plan(pipeline.store, first)
    second_plan = only_plan(pipeline.store, second)
    pipeline.approve(first_plan.plan_id, "alice")
    assert pipeline.wait_for(first, timeout=5).status == "completed"
    used = stored_approval(pipeline.store, first_plan.plan_id)

    deliver(pipeline, PlanApproved(goal_id=second, plan=second_plan, approval=used.approval))

    (letter,) = dead_letters(pipeline)
    assert "the plan differs from the one approved" in letter.reason
    assert pipeline.wait_for(second, HELD, timeout=1).status == "held"
    assert step_runs(pipeline.store, second_plan.plan_id) == {}
    assert [n["goal_id"] for n in read_notifications()] == [first]


def test_valid_approval_delivered_twice_pages_once(pipeline: Pipeline, held_plan: Plan) -> None:
    """Given the held seed plan approved by alice and run to completion (one page),
    When the same plan.approved message is delivered to the executor again,
    Then the executor republishes the outcome: the page is not sent twice and the goal stays
    completed, with one run in its audit log.
    """
    with pipeline.bus.observe() as observer:
        pipeline.approve(held_plan.plan_id, "alice")
        next_message(observer, "execution.completed", held_plan.goal_id)
        again = stored_approval(pipeline.store, held_plan.plan_id)

        deliver(pipeline, again)

        outcome = next_message(observer, "execution.completed", held_plan.goal_id)
    assert outcome.steps == {  # type: ignore[attr-defined]
        "count": "succeeded",
        "sla": "succeeded",
        "notify": "succeeded",
    }
    assert [n["message"] for n in read_notifications()] == ["Ticket count 128 exceeded SLA 100"]
    assert pipeline.wait_for(held_plan.goal_id, timeout=1).status == "completed"
    kinds = [e.kind for e in audit_entries(pipeline.store, held_plan.goal_id)]
    assert (kinds.count("goal.running"), kinds.count("goal.completed")) == (1, 1)
    assert kinds.count("step.succeeded") == 3


def test_forged_approval_after_completion_leaves_the_goal_completed(
    pipeline: Pipeline, held_plan: Plan
) -> None:
    """Given the held seed plan approved by alice and run to completion,
    When its genuine approval is replayed with the page's text changed,
    Then the executor refuses it and records why, but the goal stays completed: a refused
    message cannot rewrite an outcome. One page in all.
    """
    pipeline.approve(held_plan.plan_id, "alice")
    assert pipeline.wait_for(held_plan.goal_id, timeout=5).status == "completed"
    genuine = stored_approval(pipeline.store, held_plan.plan_id)
    notify = held_plan.step("notify").model_copy(update={"args": {"message": "all clear"}})
    edited = held_plan.model_copy(
        update={"steps": tuple(notify if s.id == "notify" else s for s in held_plan.steps)}
    )

    deliver(pipeline, genuine.model_copy(update={"plan": edited}))

    refused = eventually(
        lambda: [
            e
            for e in audit_entries(pipeline.store, held_plan.goal_id)
            if e.kind == "approval.refused"
        ],
        what="the refusal",
    )
    assert "the plan differs from the one approved" in refused[0].data["reason"]
    assert pipeline.wait_for(held_plan.goal_id, timeout=1).status == "completed"
    assert [n["message"] for n in read_notifications()] == ["Ticket count 128 exceeded SLA 100"]


def untrusted_gate_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, dict[str, Path]]:
    """A gate's own key file, and an empty trusted keys folder: the settings that give both."""
    key_file = tmp_path / "gate.pem"
    private_key = Ed25519PrivateKey.generate()
    key_file.write_bytes(
        private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    return private_key, {"signing_key_file": key_file, "trusted_keys_dir": trusted}


def test_executor_that_does_not_trust_the_gates_key_waits_for_it_and_runs_once_it_is_there(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a gate signing with its own key file, and an executor whose trusted keys folder is
    empty,
    When a read-only goal is approved by policy,
    Then its genuine approval is refused before any tool runs, but the goal is not ended for a
    folder's mistake (it failed for good, and a retry sent write plans back to a person): it
    waits in `approved`, and once the gate's public key is in the folder, the approval sent
    again (a replay, the reconciler) runs the plan.
    """
    private_key, overrides = untrusted_gate_key(tmp_path)
    trusted = overrides["trusted_keys_dir"]

    with running_pipeline(settings, **overrides) as pipe:
        goal_id = pipe.submit("how many tickets are open").goal_id
        pipe.wait_for(goal_id, {"approved"}, timeout=5)
        plan = only_plan(pipe.store, goal_id)

        with pytest.raises(TimeoutError):
            pipe.wait_for(goal_id, {"running", "completed", "failed"}, timeout=1.0)
        assert step_runs(pipe.store, plan.plan_id) == {}

        public = private_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        (trusted / "gate.pub").write_bytes(public)
        pipe.bus.publish([Envelope.of(stored_approval(pipe.store, plan.plan_id))])
        goal = pipe.wait_for(goal_id, timeout=5)

    assert goal.status == "completed", goal.status_reason


def test_an_approval_no_executor_could_check_before_it_expired_ends_its_goal_naming_the_key(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the gate's approval waiting for a key no executor has, When it expires (the key
    never came), Then the next delivery fails the goal naming the key to add, instead of
    leaving it `approved` for ever."""
    private_key, overrides = untrusted_gate_key(tmp_path)

    with running_pipeline(settings, approval_ttl_seconds=1, **overrides) as pipe:
        goal_id = pipe.submit("how many tickets are open").goal_id
        pipe.wait_for(goal_id, {"approved"}, timeout=5)
        approval = stored_approval(pipe.store, only_plan(pipe.store, goal_id).plan_id)
        eventually(lambda: expired(pipe, goal_id), 5, "the approval's expiry")
        pipe.bus.publish([Envelope.of(approval)])
        goal = pipe.wait_for(goal_id, timeout=5)

    assert goal.status == "failed"
    assert f"signed by unknown key {Signer(private_key).key_id}" in (goal.status_reason or "")


def expired(pipeline: Pipeline, goal_id: str) -> bool:
    """Whether the approval the gate stored for the goal's plan has expired."""
    with pipeline.store.session() as session:
        row = session.execute(
            select(ApprovalRow).where(ApprovalRow.goal_id == goal_id)
        ).scalar_one()
        return row.expires_at < utcnow()


def test_a_late_approval_of_a_replaced_revision_runs_nothing(
    pipeline: Pipeline, held_plan: Plan, gate_signer: Signer
) -> None:
    """Given the seed plan held, then edited by a reviewer into revision 2 (held again),
    When a gate-signed approval of revision 1 arrives late (a resend, a duplicate),
    Then nothing of revision 1 runs, the goal stays held for revision 2, and the audit log
    records the stale approval.
    """
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in held_plan.steps]
    steps[2]["args"] = {"message": "Paging the secondary"}
    with pipeline.bus.observe() as observer:
        pipeline.edit(held_plan.plan_id, "bob", steps)
        next_message(observer, "plan.held", held_plan.goal_id)

        deliver(pipeline, sign_approval(gate_signer, held_plan))

        eventually(
            lambda: (
                "approval.stale"
                in [e.kind for e in audit_entries(pipeline.store, held_plan.goal_id)]
            ),
            what="the stale approval recorded",
        )
    assert_nothing_ran(pipeline, held_plan)
    assert pipeline.wait_for(held_plan.goal_id, HELD, timeout=1).status == "held"


def _sql(pipeline: Pipeline, statement: str, **params: object) -> None:
    with pipeline.store.session() as session:
        session.execute(text(statement), params)


def test_a_policy_approval_written_into_the_store_by_hand_is_never_signed(
    pipeline: Pipeline, held_plan: Plan
) -> None:
    """Given a plan the policy held,
    When its decision row is rewritten in SQL to an approval by policy and its plan.proposed
    is delivered again, Then the gate signs nothing: a dead letter says an approval is recorded
    that it never signed (the redelivery signed whatever decision the store held), and the
    goal runs nothing.
    """
    _sql(
        pipeline,
        "UPDATE decisions SET action = 'approve' WHERE plan_id = :plan",
        plan=held_plan.plan_id,
    )
    pipeline.bus.publish([first_envelope(pipeline.store, "plan.proposed", held_plan.goal_id)])

    (letter,) = dead_letters(pipeline)
    assert "an approval by policy is recorded that the gate never signed" in letter.reason
    assert stored_approvals(pipeline, held_plan) == 0
    assert_nothing_ran(pipeline, held_plan)


def test_a_plan_rewritten_in_the_store_after_it_was_held_is_not_signed_when_approved(
    pipeline: Pipeline, held_plan: Plan
) -> None:
    """Given a held plan whose stored body is then rewritten in SQL (the page sent elsewhere),
    When a person approves it, Then the gate signs nothing: a dead letter says the stored plan
    no longer has the hash it was decided on (it signed the rewritten body, whose fresh hash
    the executor would have accepted), and nothing runs.
    """
    body = held_plan.model_dump(mode="json")
    body["steps"][2]["args"] = {"message": "sent where the attacker wanted"}
    _sql(
        pipeline,
        "UPDATE plans SET body = :body WHERE plan_id = :plan",
        body=json.dumps(body),
        plan=held_plan.plan_id,
    )

    pipeline.approve(held_plan.plan_id, "alice")

    (letter,) = dead_letters(pipeline)
    assert "the stored plan no longer has the hash it was decided on" in letter.reason
    assert stored_approvals(pipeline, held_plan) == 0
    assert_nothing_ran(pipeline, held_plan)


def stored_approvals(pipeline: Pipeline, plan: Plan) -> int:
    with pipeline.store.session() as session:
        rows = session.execute(select(ApprovalRow).where(ApprovalRow.plan_id == plan.plan_id))
        return len(rows.all())
