"""The hold is the contract for people: a decision is checked against what the gate recorded
when it held the plan, never against the deciding process's own policy file; and only the
gate signs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from approval_gate.decisions import hand_to_gate, record_decision
from plangate.bus import Envelope
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.errors import Conflict, Forbidden
from plangate.stages import build_review
from plangate.store import ApprovalRow, DecisionRow, HoldRow, open_store
from schemas import Decision, ReviewDecided, utcnow
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_entries,
    dead_letters,
    eventually,
    only_plan,
    plans_of,
    running_pipeline,
    step_runs,
    write_yaml,
)

FINANCE_POLICY = {
    "rules": [
        {
            "name": "hold-pages-for-finance",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "paging costs money; finance decides",
            "requires_role": "finance",
            "hold_ttl_seconds": 600,
        }
    ]
}
PAGED = ["Ticket count 128 exceeded SLA 100"]


def test_the_gate_records_what_a_decision_on_a_held_plan_needs(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a rule that holds pages for the role `finance` for ten minutes,
    When the gate holds the seed plan,
    Then its hold names the rule, reason, policy version, the role and the expiry.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        with pipeline.store.session() as session:
            hold = session.get_one(HoldRow, plan.plan_id)
            policy_version = session.execute(
                select(DecisionRow.policy_version).where(DecisionRow.plan_id == plan.plan_id)
            ).scalar_one()
            assert (hold.rule, hold.reason) == (
                "hold-pages-for-finance",
                "paging costs money; finance decides",
            )
            assert hold.required_roles == ["finance"]
            assert hold.policy_version == policy_version
            assert 590 < (hold.expires_at - hold.created_at).total_seconds() <= 600


@pytest.mark.parametrize("reviewing_policy", ["absent", "changed"])
def test_a_role_required_by_the_hold_is_required_whatever_the_deciding_process_has(
    settings: Settings, tmp_path: Path, reviewing_policy: str
) -> None:
    """Given the seed plan held by a rule that requires `finance`,
    When a reviewing process with no policy file, or with a policy that renamed the rule and
    dropped the role, decides it,
    Then bob (no roles) is Forbidden, nothing runs, and carol (finance) releases it once.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        if reviewing_policy == "absent":
            policy.unlink()
            elsewhere = settings.model_copy(update={"policy_file": None})
        else:
            renamed = {"rules": [{**FINANCE_POLICY["rules"][0], "name": "renamed"}]}  # type: ignore[dict-item]
            del renamed["rules"][0]["requires_role"]
            elsewhere = settings.model_copy(
                update={"policy_file": write_yaml(tmp_path / "edited.yaml", renamed)}
            )
        store = open_store(elsewhere.resolved_database_url())
        review = build_review(elsewhere, store)
        try:
            assert review.get(plan.plan_id).required_role == "finance"
            with pytest.raises(Forbidden, match="requires the role 'finance'"):
                review.approve(plan.plan_id, "bob")
            assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"

            pipeline.bus.publish(
                review.approve(plan.plan_id, "carol", roles=frozenset({"finance"}))
            )
        finally:
            store.close()

        goal = pipeline.wait_for(goal_id, timeout=5)
        assert goal.status == "completed", goal.status_reason
        assert [n["message"] for n in read_notifications()] == PAGED


def test_the_gate_withdraws_a_stored_approval_the_hold_does_not_allow(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed plan held for `finance`, and an approval by mallory (no roles) written
    straight into the store, past every review check,
    When the gate is asked to release it,
    Then it signs nothing: the goal is held again saying why, and a genuine approval by a
    reviewer with the role still runs the plan once.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        (row,) = plans_of(pipeline.store, goal_id)
        decision = Decision(
            action="approve", decided_by="mallory", reason="trust me", policy_version="x"
        )
        with pipeline.store.session() as session:
            record_decision(session, row, "human", decision, frozenset())
            envelope = hand_to_gate(session, row, decision)
        pipeline.bus.publish([envelope])

        eventually(
            lambda: "refused" in (pipeline.wait_for(goal_id, HELD, timeout=5).status_reason or ""),
            what="the approval withdrawn",
        )
        with pipeline.store.session() as session:
            assert session.execute(select(ApprovalRow)).first() is None
        assert step_runs(pipeline.store, row.plan_id) == {}

        pipeline.approve(row.plan_id, "carol", roles=frozenset({"finance"}))
        assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
        assert [n["message"] for n in read_notifications()] == PAGED


def test_a_forged_review_decided_is_a_dead_letter_and_changes_nothing(
    settings: Settings,
) -> None:
    """Given the seed plan held,
    When a review.decided naming it arrives with no person's approval in the store,
    Then it is dead-lettered with its reason and audited, and the goal stays held.
    """
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        (row,) = plans_of(pipeline.store, goal_id)
        forged = ReviewDecided(
            goal_id=goal_id,
            plan_id=row.plan_id,
            revision=row.revision,
            plan_hash=row.plan_hash,
            decided_by="alice",
        )

        pipeline.bus.publish([Envelope.of(forged)])

        (letter,) = dead_letters(pipeline)
        assert letter.routing_key == "review.decided"
        assert "no approval by a person is recorded" in letter.reason
        kinds = [entry.kind for entry in audit_entries(pipeline.store, goal_id)]
        assert "review.refused" in kinds
        assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
        assert step_runs(pipeline.store, row.plan_id) == {}


def test_a_hold_past_its_expiry_cannot_be_approved_even_before_the_sweep(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed plan held, its hold's expiry passed but no sweep has expired it yet,
    When a reviewer with the role approves it,
    Then the approval is refused as too late (Conflict), and nothing is signed.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    # The expiry brought forward in SQL, as only tampering could: `audit verify` says so.
    with running_pipeline(settings, policy_file=policy, tampers=True) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        with pipeline.store.session() as session:
            session.get_one(HoldRow, plan.plan_id).expires_at = utcnow() - timedelta(seconds=1)

        with pytest.raises(Conflict, match="the hold has expired"):
            pipeline.approve(plan.plan_id, "carol", roles=frozenset({"finance"}))

        with pipeline.store.session() as session:
            assert session.execute(select(ApprovalRow)).first() is None


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"submitted_by": "alice"}, id="submitted_by-as-the-publishing-docs-show"),
        pytest.param({"submitter": "alice"}, id="submitter"),
        pytest.param({"team": "billing", "submitter": "alice"}, id="one-of-several-named"),
        # Spelled otherwise by the submitting service: she approved her own goal.
        pytest.param({"submitter": "ALICE"}, id="in-capitals"),
        pytest.param({"user": " alice "}, id="with-spaces"),
    ],
)
def test_a_goal_s_submitter_is_barred_under_whichever_key_names_them(
    settings: Settings, tmp_path: Path, metadata: dict[str, str]
) -> None:
    """Given a rule that holds pages for finance and bars the submitter,
    When alice, of finance, whom the goal's metadata names as its submitter, approves it,
    Then she is Forbidden and nothing runs; bob, of finance too, releases it once.
    """
    rule = {**FINANCE_POLICY["rules"][0], "approver_not_submitter": True}  # type: ignore[dict-item]
    policy = write_yaml(tmp_path / "policy.yaml", {"rules": [rule]})
    finance = frozenset({"finance"})
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL, metadata=metadata).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        review = build_review(settings, pipeline.store)

        with pytest.raises(Forbidden, match="bars the goal's submitter from approving it"):
            review.approve(plan.plan_id, "alice", roles=finance)
        assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"

        pipeline.approve(plan.plan_id, "bob", roles=finance)
        goal = pipeline.wait_for(goal_id, timeout=5)

    assert goal.status == "completed", goal.status_reason
    assert [n["message"] for n in read_notifications()] == PAGED


def test_a_broken_rule_before_the_finance_rule_still_asks_finance_and_two_approvals(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a rule approving small pages that cannot be evaluated on the seed plan, then the
    rule holding pages for two of finance,
    When dave (no role) approves, then carol (finance) alone,
    Then dave is Forbidden and carol's approval counts one of two: the plan stays held. Held
    by the broken rule alone, it asked nothing, and dave's approval ran it.
    """
    broken = {
        "name": "approve-small-pages",
        "match": "plan.steps.all(s, s.args.missing < 100.0)",
        "action": "approve",
        "reason": "small",
    }
    finance = {**FINANCE_POLICY["rules"][0], "approvals": 2}  # type: ignore[dict-item]
    policy = write_yaml(tmp_path / "policy.yaml", {"rules": [broken, finance]})
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)

        with pytest.raises(Forbidden, match="requires the role 'finance'"):
            pipeline.approve(plan.plan_id, "dave")
        pipeline.approve(plan.plan_id, "carol", roles=frozenset({"finance"}))

        assert pipeline.wait_for(goal_id, HELD, timeout=2).status == "held"
        with pipeline.store.reading() as session:
            hold = session.get_one(HoldRow, plan.plan_id)
            assert (hold.required_roles, hold.approvals_required) == (["finance"], 2)
    assert read_notifications() == []
