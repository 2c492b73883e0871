"""Four eyes: a rule with `approvals: 2` and `approver_not_submitter` through the distributed
pipeline: worker processes on a real Redis and a shared SQLite store, reviewers deciding with
their own tokens through `plangate review approve` in separate processes."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from approval_gate.approvals import count_approval
from approval_gate.holds import HOLD_TYPE, check_sealed
from approval_gate.policy import Policy
from plangate.bus import Envelope
from plangate.client import Client
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.errors import Conflict, Forbidden, InputInvalid, PolicyError
from plangate.relay import deliver
from plangate.reviewers import Reviewer, Reviewers, add_reviewer, remove_reviewer
from plangate.server import create_app
from plangate.signing import TrustedKeys
from plangate.signing_keys import load_or_create_signer, load_trusted_keys
from plangate.store import ApprovalRow, AuditRow, HoldRow, PlanRow, open_store
from schemas import Decision, Plan, PlanApproved, SignedEnvelope, plan_hash
from tests.browser import chromium
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, STAGES, Fleet
from tests.support import (
    HELD,
    audit_entries,
    dead_letters,
    eventually,
    only_plan,
    plans_of,
    running_pipeline,
    write_yaml,
)
from tests.test_review_api import call, serving

FOUR_EYES = """\
rules:
  - name: approve-read-only
    match: 'plan.steps.all(s, s.effect == "read")'
    action: approve
    reason: every step only reads
  - name: pages-need-two-from-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: paging costs money; two people from finance decide
    requires_role: finance
    approvals: 2
    approver_not_submitter: true
"""


def four_eyes_fleet(tmp_path: Path, redis_url: str, **env: str) -> Fleet:
    """A migrated store under the four-eyes policy, with the reviewers file; no worker yet."""
    (tmp_path / "policy.yaml").write_text(FOUR_EYES)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml"),
            **FAST_SWEEPS,
            **env,
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    return fleet


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """Workers of every stage under the four-eyes policy, and the reviewers file."""
    fleet = four_eyes_fleet(tmp_path, redis_url)
    fleet.start_all()
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def deployed_fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """The same workers as deploy/ runs them: each stage with a data folder of its own, sharing
    only the gate's public keys folder and the reviewers file (the CLI has its own folder)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    fleet = four_eyes_fleet(tmp_path, redis_url, PLANGATE_TRUSTED_KEYS_DIR=str(keys))
    for stage in STAGES:
        fleet.start(stage, PLANGATE_DATA_DIR=str(tmp_path / f"{stage}-data"))
    try:
        yield fleet
    finally:
        fleet.stop_all()


def status_of(fleet: Fleet, goal_id: str) -> dict[str, object]:
    return dict(json.loads(fleet.plangate("status", goal_id, "--json").stdout))


def wait_until(fleet: Fleet, goal_id: str, states: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(fleet, goal_id)
        if status["status"] in states or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.mark.redis
def test_a_page_runs_once_two_people_of_finance_approved_it_neither_the_submitter(
    fleet: Fleet,
) -> None:
    """Given a rule holding pages for two approvals from `finance`, the submitter barred,
    When carol (finance) submits the seed goal and approves it herself, alice (finance)
    approves twice, and bob (finance) approves,
    Then carol is refused, alice's second approval is refused as given already (exit 2; it
    said "recorded" and counted nothing) and the plan stays held at "1 of 2 approvals
    (alice)"; bob's makes two: the plan runs once, and its signed approval names alice
    and bob.
    """
    reviewers = fleet.folder / "reviewers.yaml"
    tokens = {
        name: add_reviewer(reviewers, name, ["finance"]) for name in ("alice", "bob", "carol")
    }
    submitted = fleet.plangate("submit", SEED_GOAL, "--meta", "submitter=carol", "--json")
    assert submitted.returncode == 0, submitted.stderr
    goal_id = json.loads(submitted.stdout)["goal_id"]
    held = wait_until(fleet, goal_id, {"held"})
    assert held["status"] == "held", fleet.logs()
    plan_id = str(held["plan_id"])

    def approve(name: str) -> tuple[int, str]:
        done = fleet.plangate(
            "review", "approve", plan_id, "--json", PLANGATE_REVIEWER_TOKEN=tokens[name]
        )
        return done.returncode, done.stdout + done.stderr

    own, own_said = approve("carol")
    first, first_said = approve("alice")
    again, again_said = approve("alice")
    shown = fleet.plangate(
        "review", "show", plan_id, "--json", PLANGATE_REVIEWER_TOKEN=tokens["bob"]
    )
    still = status_of(fleet, goal_id)["status"]
    second, second_said = approve("bob")
    done = wait_until(fleet, goal_id, {"completed", "failed"})

    assert own == 2, own_said
    assert "bars the goal's submitter from approving it, and carol submitted" in own_said
    assert first == 0, first_said
    assert "1 of 2 approvals (alice); 1 more needed" in json.loads(first_said)["message"]
    assert again == 2, again_said
    assert f"alice has approved plan {plan_id} already" in again_said
    assert json.loads(shown.stdout)["approval_progress"] == "1 of 2 approvals (alice)"
    assert still == "held"
    assert second == 0, second_said
    # The last approval says how far the approval is too (it said no count at all).
    assert json.loads(second_said)["message"] == (
        "approval by bob recorded: 2 of 2 approvals (alice, bob); the gate signs it and "
        "releases the plan"
    )
    assert done["status"] == "completed", fleet.logs()
    notified = (fleet.folder / "notifications.jsonl").read_text().splitlines()
    assert len(notified) == 1
    assert signed_store_approvers(fleet, plan_id) == ("alice", "bob")


def test_an_approval_naming_fewer_approvers_than_the_hold_requires_runs_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed plan held for two approvals,
    When an approval signed with the gate's own key but naming only alice reaches the executor
    (as if the count had been skipped),
    Then the executor refuses it against the hold's record: a dead letter saying so, the goal
    still held, nobody paged.
    """
    (tmp_path / "policy.yaml").write_text(FOUR_EYES)
    with running_pipeline(settings, policy_file=tmp_path / "policy.yaml") as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        signer = load_or_create_signer(pipeline.settings)
        decision = Decision(action="approve", decided_by="alice", reason="ok", policy_version="x")
        one = signer.approval(plan, decision, timedelta(minutes=5), approvers=["alice"])

        pipeline.bus.publish(
            [Envelope.of(PlanApproved(goal_id=goal_id, plan=plan, approval=signer.sign(one)))]
        )

        [letter] = dead_letters(pipeline)
        assert "names 1 approvers" in letter.reason
        assert "requires 2" in letter.reason
        assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
        assert read_notifications() == []


def test_approvals_apply_to_hold_rules_only() -> None:
    """A rule that approves by itself cannot ask for two approvals: refused at load."""
    text = FOUR_EYES.replace("action: hold", "action: approve")

    with pytest.raises(PolicyError, match="apply to hold rules only"):
        Policy.from_text(text)


@pytest.mark.redis
def test_the_api_and_the_page_show_how_far_the_approval_is(fleet: Fleet) -> None:
    """Given the seed plan held for two approvals from finance,
    When alice approves it through the API,
    Then the API answers that one more is needed, its detail says "1 of 2 approvals (alice)",
    and so does the plan's page in headless Chromium; the plan is still held.
    """
    alice, bob = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"
    reviewers = Reviewers(
        [
            Reviewer.with_token("alice", alice, {"finance"}),
            Reviewer.with_token("bob", bob, {"finance"}),
        ]
    )
    with Client(fleet.settings()) as client, serving(client, reviewers) as url:
        state = client.submit(SEED_GOAL).wait(timeout=30, until={"held"})
        plan_id = str(state.plan_id)
        detail_url = f"{url}/api/v1/reviews/{plan_id}"
        _, shown = call(detail_url, token=alice)
        code, approved = call(
            f"{detail_url}/approve", "POST", {"plan_hash": shown["plan_hash"]}, token=alice
        )
        _, after = call(detail_url, token=alice)
        with chromium() as browser:
            page = browser.new_page(base_url=url)
            page.goto("/reviews")
            page.fill("#token", bob)
            page.click("button[type=submit]")
            page.wait_for_url("**/reviews")
            page.goto(f"/reviews/{plan_id}")
            on_page = page.inner_text("#hold-approvals")

    assert code == 200, approved
    assert approved["message"].endswith("1 of 2 approvals (alice); 1 more needed")
    assert approved["status"] == "held"
    assert after["approval_progress"] == "1 of 2 approvals (alice)"
    assert (after["approvals_required"], after["approvers"]) == (2, ["alice"])
    assert on_page == "1 of 2 approvals (alice)"


TWO_FROM_FINANCE = {
    "mode": "enforce",
    "rules": [
        {
            "name": "pages-need-two-from-finance",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "paging costs money; two people from finance decide",
            "requires_role": "finance",
            "approvals": 2,
        }
    ],
}
FINANCE = frozenset({"finance"})


def test_the_author_of_an_edit_is_not_one_of_the_two_approvers_it_needs(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance, which alice edits (revision 2, held
    again by the same rule),
    When alice approves her own edit, Then she is refused: she wrote it (her approval and one
    other's released a plan only one other person had checked);
    When bob and carol approve it, Then it runs, and the signed approval names them.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        first = only_plan(pipeline.store, goal_id)
        steps = [step.model_dump(mode="json", exclude_defaults=True) for step in first.steps]
        steps[2]["args"] = {"message": "edited by alice"}
        pipeline.edit(first.plan_id, "alice", steps, roles=FINANCE)
        edited = eventually(
            lambda: next((p for p in plans_of(pipeline.store, goal_id) if p.revision == 2), None),
            what="revision 2",
        )
        pipeline.wait_for(goal_id, HELD)

        with pytest.raises(Forbidden, match="alice wrote this revision"):
            pipeline.approve(edited.plan_id, "alice", roles=FINANCE)
        pipeline.approve(edited.plan_id, "bob", roles=FINANCE)
        pipeline.approve(edited.plan_id, "carol", roles=FINANCE)

        assert pipeline.wait_for(goal_id).status == "completed"
        assert signed_approvers(pipeline, edited.plan_id) == ("bob", "carol")


def signed_approvers(pipeline: Pipeline, plan_id: str) -> tuple[str, ...]:
    """The approvers the gate's signed approval of a revision names, its signature checked."""
    with pipeline.store.session() as session:
        envelope = session.execute(
            select(ApprovalRow.envelope).where(ApprovalRow.plan_id == plan_id)
        ).scalar_one()
    approval = load_trusted_keys(pipeline.settings).verify(
        SignedEnvelope.model_validate(envelope), allow_expired=True
    )
    return approval.approvers


def test_each_approval_of_several_is_audited_with_its_comment(
    settings: Settings, tmp_path: Path
) -> None:
    """The first of two approvals is in the audit log with what its reviewer wrote (the
    comment was dropped: only the last approval's reached the record)."""
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id

        pipeline.review.approve(plan_id, "bob", roles=FINANCE, comment="the SLA breach is real")

        entries = audit_entries(pipeline.store, goal_id)
        counted = [e for e in entries if e.kind == "plan.approval_counted"]
        assert [(e.actor, e.data["comment"]) for e in counted] == [
            ("bob", "the SLA breach is real")
        ]


def test_the_approval_that_releases_several_records_its_reviewers_words_alone(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance,
    When alice approves it with a comment and bob releases it with none,
    Then bob's approval records no comment (""): it read "approved; approved by alice, bob",
    plangate's words in his comment's place. Who approved is the signed approval's.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id

        pipeline.review.approve(plan_id, "alice", roles=FINANCE, comment="the breach is real")
        pipeline.approve(plan_id, "bob", roles=FINANCE)
        assert pipeline.wait_for(goal_id).status == "completed"
        entries = audit_entries(pipeline.store, goal_id)
        approvers = signed_approvers(pipeline, plan_id)

    said = [
        (e.actor, e.data["comment"])
        for e in entries
        if e.kind in ("plan.approval_counted", "goal.approved") and e.actor != "gate"
    ]
    assert said == [("alice", "the breach is real"), ("bob", "")]
    assert approvers == ("alice", "bob")


def test_a_four_eyes_decision_tells_each_approval_in_the_api_and_on_the_page(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance,
    When alice approves it with a comment, then bob releases it with his,
    Then the review API's `decision` is still bob's approval (its fields as they were), and
    names both approvals, in turn, each with its comment and time; the review page shows both.
    The decision named bob alone: alice's comment was only in the audit log.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        pipeline.review.approve(plan_id, "alice", roles=FINANCE, comment="the breach is real")
        released = pipeline.review.approve(plan_id, "bob", roles=FINANCE, comment="page them")
        deliver(pipeline.store, pipeline.bus, released)
        assert pipeline.wait_for(goal_id).status == "completed"

    reviewers = Reviewers([Reviewer.with_token("carol", "carol-token", ["finance"])])
    with TestClient(create_app(settings, reviewers=reviewers), follow_redirects=False) as http:
        bearer = {"Authorization": "Bearer carol-token"}
        decision = http.get(f"/api/v1/reviews/{plan_id}", headers=bearer).json()["decision"]
        assert http.post("/login", data={"token": "carol-token"}).status_code == 303
        page = http.get(f"/reviews/{plan_id}").text

    assert {k: decision[k] for k in ("action", "decided_by", "comment")} == {
        "action": "approve",
        "decided_by": "bob",
        "comment": "page them",
    }
    approvals = decision["approvals"]
    assert [(a["approved_by"], a["comment"]) for a in approvals] == [
        ("alice", "the breach is real"),
        ("bob", "page them"),
    ]
    times = [datetime.fromisoformat(a["approved_at"]) for a in approvals]
    assert times[0] <= times[1] <= datetime.fromisoformat(decision["decided_at"])
    listed = page.split('id="approvals"', 1)[1].split("</ol>", 1)[0]
    assert listed.index("alice") < listed.index("the breach is real") < listed.index("bob")
    assert "page them" in listed


def test_a_single_approval_is_audited_with_its_comment(pipeline: Pipeline) -> None:
    """The seed plan held for one approval: what alice wrote is in the audit log's approval
    (the entry said only "approved by alice; the gate checks the hold")."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan_id = only_plan(pipeline.store, goal_id).plan_id

    pipeline.review.approve(plan_id, "alice", comment="on-call agreed to be paged")

    approved = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.approved"]
    assert [(e.actor, e.data["comment"]) for e in approved] == [
        ("alice", "on-call agreed to be paged")
    ]


def test_an_approval_comment_is_bounded_by_the_desk(pipeline: Pipeline) -> None:
    """A comment over 2000 characters is refused by the desk itself (the API did not bound an
    approval's, and the audit log kept it whole); one within the bound is kept."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan_id = only_plan(pipeline.store, goal_id).plan_id

    with pytest.raises(InputInvalid, match="the limit is 2000"):
        pipeline.review.approve(plan_id, "alice", comment="x" * 2001)
    pipeline.review.approve(plan_id, "alice", comment="y" * 2000)

    approved = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.approved"]
    assert approved[0].data["comment"] == "y" * 2000


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_the_author_of_an_edit_is_refused_and_two_others_release_it(
    fleet: Fleet,
) -> None:
    """Given workers as separate processes under the four-eyes policy, and reviewers using the
    CLI in processes of their own,
    When alice edits a held page with `review edit --file` and then approves her own revision,
    Then she is refused (exit 2); bob's and carol's approvals release it, and it runs once.
    """
    reviewers = fleet.folder / "reviewers.yaml"
    tokens = {n: add_reviewer(reviewers, n, ["finance"]) for n in ("alice", "bob", "carol")}
    submitted = fleet.plangate("submit", SEED_GOAL, "--json")
    goal_id = json.loads(submitted.stdout)["goal_id"]
    first = str(wait_until(fleet, goal_id, {"held"})["plan_id"])
    shown = fleet.plangate("review", "show", first, "--json", PLANGATE_REVIEWER_TOKEN=tokens["bob"])
    steps = json.loads(shown.stdout)["steps"]
    steps[2]["args"]["message"] = "edited by alice"
    edit = fleet.folder / "edit.json"
    edit.write_text(json.dumps({"summary": "paged by alice", "steps": steps}))

    edited = fleet.plangate(
        "review", "edit", first, "--file", str(edit), "--json",
        PLANGATE_REVIEWER_TOKEN=tokens["alice"],
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    second = json.loads(edited.stdout)["newest_plan_id"]
    held = wait_until(fleet, goal_id, {"held"})
    assert held["plan_id"] == second, fleet.logs()

    def approve(name: str) -> tuple[int, str]:
        done = fleet.plangate("review", "approve", second, PLANGATE_REVIEWER_TOKEN=tokens[name])
        return done.returncode, done.stdout + done.stderr

    own, own_said = approve("alice")
    assert own == 2, own_said
    assert "alice wrote this revision (an edit)" in own_said
    assert approve("bob")[0] == 0
    assert approve("carol")[0] == 0
    assert wait_until(fleet, goal_id, {"completed", "failed"})["status"] == "completed"
    assert len((fleet.folder / "notifications.jsonl").read_text().splitlines()) == 1


def _edit_newest(pipeline: Pipeline, goal_id: str, reviewer: str, message: str) -> Plan:
    """Have `reviewer` edit the goal's newest held revision; return the revision it makes."""
    newest = max(plans_of(pipeline.store, goal_id), key=lambda p: p.revision)
    plan = Plan.model_validate(newest.body)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in plan.steps]
    steps[2]["args"] = {"message": message}
    pipeline.edit(plan.plan_id, reviewer, steps, roles=FINANCE)
    edited = eventually(
        lambda: next(
            (p for p in plans_of(pipeline.store, goal_id) if p.revision == newest.revision + 1),
            None,
        ),
        what=f"revision {newest.revision + 1}",
    )
    pipeline.wait_for(goal_id, HELD)
    return Plan.model_validate(edited.body)


def test_an_editor_stays_an_author_when_someone_else_edits_again(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance, which alice edits (revision 2) and
    bob then edits again (revision 3, one word changed),
    When alice approves revision 3, Then she is refused: her words are still in it (only the
    newest revision's editor was barred, so a trivial second edit made her an approver);
    bob is refused as its editor; carol's and dave's approvals release it.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        _edit_newest(pipeline, goal_id, "alice", "page: the SLA is breached")
        third = _edit_newest(pipeline, goal_id, "bob", "page: the SLA is breached!")
        assert third.revision == 3

        with pytest.raises(Forbidden, match="alice wrote revision 2, which this one builds on"):
            pipeline.approve(third.plan_id, "alice", roles=FINANCE)
        with pytest.raises(Forbidden, match="bob wrote this revision"):
            pipeline.approve(third.plan_id, "bob", roles=FINANCE)
        pipeline.approve(third.plan_id, "carol", roles=FINANCE)
        pipeline.approve(third.plan_id, "dave", roles=FINANCE)

        assert pipeline.wait_for(goal_id).status == "completed"
        assert signed_approvers(pipeline, third.plan_id) == ("carol", "dave")


def test_a_refused_release_says_who_does_not_count_and_how_many_more_must_approve(
    settings: Settings, tmp_path: Path
) -> None:
    """Given alice's edit held for two approvals, with her own approval of it recorded before
    the author bar existed (written into the store here, as an older version did),
    When bob approves, Then his approval is counted as the gate counts, without alice's: the
    plan stays held at 1 of 2 (bob), one more needed (it was said released, and the gate then
    refused it);
    When carol approves, Then bob's and carol's approvals release it.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(
        settings, tampers=True, policy_file=policy
    ) as pipeline:  # an approval written into the store as an older version did
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        edited = _edit_newest(pipeline, goal_id, "alice", "edited by alice")
        with pipeline.store.session() as session:
            row = session.get_one(PlanRow, edited.plan_id)
            count_approval(session, row, "alice", FINANCE)

        assert not pipeline.approve(edited.plan_id, "bob", roles=FINANCE)
        said = pipeline.review.approval_said(edited.plan_id, "bob")
        assert said == "approval by bob recorded: 1 of 2 approvals (bob); 1 more needed"
        assert pipeline.wait_for(goal_id, HELD).status == "held"

        with pytest.raises(Conflict, match="bob has approved plan"):
            pipeline.approve(edited.plan_id, "bob", roles=FINANCE)
        pipeline.approve(edited.plan_id, "carol", roles=FINANCE)
        assert pipeline.wait_for(goal_id).status == "completed"
        assert signed_approvers(pipeline, edited.plan_id) == ("bob", "carol")


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_approvals_recorded_with_a_reviewers_file_of_ones_own_release_nothing(
    fleet: Fleet,
) -> None:
    """Given workers as processes, the gate given the team's reviewers file (alice and bob of
    finance), and a page held for two approvals from finance,
    When someone with only the database's and the broker's settings writes a reviewers file of
    their own, naming an `alice` and a `bob` of finance, and approves with its tokens,
    Then the CLI records both approvals, but the gate refuses to sign: the goal is held again,
    saying the approvals carry no proof of alice's and bob's tokens, and nothing is paged
    (the gate signed whatever the store said people had approved);
    When the real alice and bob approve, Then it runs once.
    """
    team = fleet.folder / "reviewers.yaml"
    tokens = {name: add_reviewer(team, name, ["finance"]) for name in ("alice", "bob")}
    mine = fleet.folder / "mine.yaml"
    forged = {name: add_reviewer(mine, name, ["finance"]) for name in ("alice", "bob")}
    submitted = fleet.plangate("submit", SEED_GOAL, "--json")
    goal_id = json.loads(submitted.stdout)["goal_id"]
    plan_id = str(wait_until(fleet, goal_id, {"held"})["plan_id"])

    for name in ("alice", "bob"):
        recorded = fleet.plangate(
            "review", "approve", plan_id,
            PLANGATE_REVIEWER_TOKEN=forged[name], PLANGATE_REVIEWERS_FILE=str(mine),
        )  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
    refused = eventually(
        lambda: (s := status_of(fleet, goal_id))["status"] == "held" and "proof" in str(s) and s,
        timeout=30,
        what="the gate's refusal",
    )
    assert "alice's does not count (the approval recorded as alice's carries no proof" in str(
        refused
    )
    assert "0 of 2 approvals" in str(refused)
    assert not (fleet.folder / "notifications.jsonl").exists()
    # The gate withdrew the decision (its row deleted, the goal held again): no false alarm.
    verified = fleet.plangate("audit", "verify")
    assert "broken" not in verified.stderr, verified.stderr

    for name in ("alice", "bob"):
        done = fleet.plangate("review", "approve", plan_id, PLANGATE_REVIEWER_TOKEN=tokens[name])
        assert done.returncode == 0, done.stdout + done.stderr
    assert wait_until(fleet, goal_id, {"completed", "failed"})["status"] == "completed"
    assert len((fleet.folder / "notifications.jsonl").read_text().splitlines()) == 1


@dataclass
class HeldPage:
    """The seed goal held for two approvals from finance in a fleet, and its reviewers' tokens."""

    fleet: Fleet
    team: Path
    tokens: dict[str, str]
    goal_id: str
    plan_id: str

    def approve(self, name: str) -> str:
        """`plangate review approve` with `name`'s token; return what it printed."""
        done = self.fleet.plangate(
            "review", "approve", self.plan_id, PLANGATE_REVIEWER_TOKEN=self.tokens[name]
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def held_page(fleet: Fleet, *names: str) -> HeldPage:
    team = fleet.folder / "reviewers.yaml"
    tokens = {n: add_reviewer(team, n, ["finance"]) for n in names}
    submitted = fleet.plangate("submit", SEED_GOAL, "--json")
    goal_id = json.loads(submitted.stdout)["goal_id"]
    plan_id = str(wait_until(fleet, goal_id, {"held"})["plan_id"])
    return HeldPage(fleet, team, tokens, goal_id, plan_id)


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_the_approval_of_a_reviewer_removed_since_counts_no_more(
    deployed_fleet: Fleet,
) -> None:
    """Given a page held for two approvals from finance, which bob approved (1 of 2),
    When bob is removed from the reviewers file and carol approves, Then carol is told it is
    1 of 2 (carol), one more needed, and nothing is paged (she was told the plan was released,
    and the gate then refused it, bob being no longer in its reviewers file);
    When dave approves too, Then carol's and dave's release it; `status` said the approvals
    held were given, not counted, and names the signed approval's approvers once released (it
    listed bob's, removed, as "counted", beside the approval that left him out).
    """
    page = held_page(deployed_fleet, "bob", "carol", "dave")
    page.approve("bob")
    remove_reviewer(page.team, "bob")
    assert "1 of 2 approvals (carol); 1 more needed" in page.approve("carol")
    held = status_of(deployed_fleet, page.goal_id)
    assert held["status"] == "held"
    assert held["approvers_signed"] is False
    held_text = deployed_fleet.plangate("status", page.goal_id).stdout
    assert "approvals given: " in held_text
    assert "counted" not in held_text
    assert not (deployed_fleet.folder / "notifications.jsonl").exists()

    page.approve("dave")
    done = wait_until(deployed_fleet, page.goal_id, {"completed", "failed"})
    assert done["status"] == "completed"
    assert signed_store_approvers(deployed_fleet, page.plan_id) == ("carol", "dave")
    assert (done["approvers"], done["approvers_signed"]) == (["carol", "dave"], True)
    assert "approved by: carol, dave (the gate's signed approval)" in (
        deployed_fleet.plangate("status", page.goal_id).stdout
    )


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_approvals_wait_for_a_gate_started_without_the_reviewers_file(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a deployment whose gate was started without the reviewers file serve and the CLI
    use (PLANGATE_REVIEWERS_FILE left out of the gate's settings), and a page held for two
    approvals from finance,
    When bob and carol approve, Then both approvals are kept and the goal waits, approved, for
    the gate, whose log says what to configure (it withdrew them, and both had to approve
    again once the gate was fixed);
    When the gate is started again with the reviewers file, Then the page is released by bob's
    and carol's approvals, nobody approving again.
    """
    fleet = four_eyes_fleet(tmp_path, redis_url)
    for stage in ("planner", "executor"):
        fleet.start(stage)
    gate = fleet.start("gate", PLANGATE_REVIEWERS_FILE="")
    try:
        page = held_page(fleet, "bob", "carol")
        page.approve("bob")
        page.approve("carol")
        eventually(
            lambda: f"bob's approval of plan {page.plan_id}" in fleet.logs(),
            timeout=30,
            what="the gate's word on the approvals",
        )
        waiting = status_of(fleet, page.goal_id)
        assert waiting["status"] == "approved", waiting
        assert "start it with the reviewers file serve uses" in fleet.logs()
        # Asked again every 30 s, not every 2 s (each time a line of the log).
        assert "in 30 s: this gate has no reviewers file" in fleet.logs()
        assert not (fleet.folder / "notifications.jsonl").exists()

        fleet.kill(gate)
        fleet.start("gate")
        done = wait_until(fleet, page.goal_id, {"completed", "failed", "held"}, timeout=60)
        assert done["status"] == "completed", (done, fleet.logs())
        assert signed_store_approvers(fleet, page.plan_id) == ("bob", "carol")
    finally:
        fleet.stop_all()


def signed_store_approvers(fleet: Fleet, plan_id: str) -> tuple[str, ...]:
    """The approvers the gate's signed approval of a revision names, in a fleet's store."""
    store = open_store(fleet.database_url, upgrade=False)
    try:
        with store.session() as session:
            envelope = session.execute(
                select(ApprovalRow.envelope).where(ApprovalRow.plan_id == plan_id)
            ).scalar_one()
    finally:
        store.close()
    settings = fleet.settings()
    if shared := fleet.extra_env.get("PLANGATE_TRUSTED_KEYS_DIR"):  # deploy/'s shared folder
        settings.trusted_keys_dir = Path(shared)
    keys = load_trusted_keys(settings)
    return keys.verify(SignedEnvelope.model_validate(envelope), allow_expired=True).approvers


def test_a_hold_rewritten_in_the_store_to_ask_fewer_approvers_releases_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance,
    When its hold is rewritten in SQL to ask one, and bob approves, Then the gate signs
    nothing: the goal is held again saying the hold is not as the gate recorded it (one real
    approval released a plan that asked two), and no approval is stored.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(
        settings, tampers=True, policy_file=policy
    ) as pipeline:  # the hold is rewritten in SQL
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        with pipeline.store.session() as session:
            session.get_one(HoldRow, plan_id).approvals_required = 1

        pipeline.approve(plan_id, "bob", roles=FINANCE)

        refused = gate_refusal(pipeline, goal_id)
        changed = "(what it asks was changed after the gate sealed it: approvals_required)"
        assert f"is not as the gate recorded it {changed}" in str(refused.data)
        assert pipeline.wait_for(goal_id, HELD).status == "held"
        with pipeline.store.session() as session:
            assert session.execute(select(ApprovalRow)).first() is None


def test_a_hold_sealed_by_a_gate_of_another_version_is_said_so_not_as_tampered(
    settings: Settings, tmp_path: Path
) -> None:
    """A rolling upgrade: a gate of the release before sealed a hold with fewer terms (no
    revision, hash or reason). The new gate refused its approval saying "what it asks was
    changed after the gate sealed it", which its operator read as tampering.

    Given a page held for two from finance, its seal made over the older shape of the terms
    by the gate's own key,
    When it is approved twice,
    Then the gate signs nothing, saying it was sealed by a gate of another version.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, tampers=True, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        signer = load_or_create_signer(pipeline.settings)
        with pipeline.store.session() as session:
            hold = session.get_one(HoldRow, plan_id)
            terms = json.loads(base64.b64decode(SignedEnvelope.model_validate(hold.seal).payload))
            older = {k: v for k, v in terms.items() if k not in ("revision", "plan_hash", "reason")}
            payload = json.dumps(older, sort_keys=True, separators=(",", ":")).encode()
            hold.seal = signer.envelope(HOLD_TYPE, payload).model_dump(mode="json")

        pipeline.approve(plan_id, "alice", roles=FINANCE)
        pipeline.approve(plan_id, "bob", roles=FINANCE)

        refused = str(gate_refusal(pipeline, goal_id).data)
        assert "it was sealed by a gate of another plangate version" in refused
        assert "decide it with a gate of that version" in refused
        with pipeline.store.session() as session:
            assert session.execute(select(ApprovalRow)).first() is None


def test_a_held_plan_rewritten_in_the_store_with_its_hash_is_not_the_one_its_hold_sealed(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance,
    When its stored body and hash are both rewritten in SQL (the page sent elsewhere, the hash
    made to match), and bob and carol approve, Then the gate signs nothing: the hold was
    sealed for the plan as held, and the goal is held again saying so.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(
        settings, tampers=True, policy_file=policy
    ) as pipeline:  # the plan is rewritten in SQL
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        held = only_plan(pipeline.store, goal_id)
        steps = [step.model_dump(mode="json") for step in held.steps]
        steps[2]["args"] = {"message": "sent where someone else wanted"}
        rewritten = Plan.model_validate({**held.model_dump(mode="json"), "steps": steps})
        with pipeline.store.session() as session:
            row = session.get_one(PlanRow, held.plan_id)
            row.body, row.plan_hash = rewritten.model_dump(mode="json"), plan_hash(rewritten)

        pipeline.approve(held.plan_id, "bob", roles=FINANCE)
        pipeline.approve(held.plan_id, "carol", roles=FINANCE)

        refused = gate_refusal(pipeline, goal_id)
        assert "is not as the gate recorded it" in str(refused.data)
        with pipeline.store.session() as session:
            assert session.execute(select(ApprovalRow)).first() is None


def gate_refusal(pipeline: Pipeline, goal_id: str) -> AuditRow:
    """Wait for the audit entry in which the gate refused to release the goal's approval."""
    return eventually(
        lambda: next(
            (e for e in audit_entries(pipeline.store, goal_id) if "refused" in str(e.data)),
            None,
        ),
        what="the gate's refusal",
    )


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_a_reviewer_given_a_new_token_may_approve_again(
    deployed_fleet: Fleet,
) -> None:
    """Given a page held for two approvals from finance, which bob approved,
    When bob's token is replaced (removed and added again, as for a lost token) and he approves
    with the new one, Then it counts (1 of 2, bob): his first approval, which the gate would
    refuse, gave way (he was refused as having approved already, and carol was then told the
    plan was released);
    When carol approves, Then bob's and carol's release it.
    """
    page = held_page(deployed_fleet, "bob", "carol")
    page.approve("bob")
    remove_reviewer(page.team, "bob")
    page.tokens["bob"] = add_reviewer(page.team, "bob", ["finance"])
    assert "1 of 2 approvals (bob); 1 more needed" in page.approve("bob")

    page.approve("carol")
    assert (
        wait_until(deployed_fleet, page.goal_id, {"completed", "failed"})["status"] == "completed"
    )
    assert signed_store_approvers(deployed_fleet, page.plan_id) == ("bob", "carol")


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_the_audit_log_holds_a_refusal_and_proves_what_status_shows(
    deployed_fleet: Fleet,
) -> None:
    """Given each stage in a data folder of its own, sharing only the gate's public keys
    folder and the reviewers file, and erin (no role) refused, then bob approving (twice: the
    second refused) and carol approving,
    When an auditor in a folder of their own, given the database and the keys folder alone,
    runs `plangate audit verify`, Then it holds: erin's refusal is in the log, and the step
    results the executor's process recorded match the digests its entries carry;
    When a step's output is rewritten in the store, Then verify says the records are broken.
    """
    page = held_page(deployed_fleet, "bob", "carol")
    erin = add_reviewer(page.team, "erin", [])
    refused = deployed_fleet.plangate(
        "review", "approve", page.plan_id, PLANGATE_REVIEWER_TOKEN=erin
    )
    page.approve("bob")
    twice = deployed_fleet.plangate(
        "review", "approve", page.plan_id, PLANGATE_REVIEWER_TOKEN=page.tokens["bob"]
    )
    page.approve("carol")
    done = wait_until(deployed_fleet, page.goal_id, {"completed", "failed"})
    auditor = {
        "PLANGATE_DATA_DIR": str(deployed_fleet.folder / "auditor"),
        "PLANGATE_TRUSTED_KEYS_DIR": str(deployed_fleet.folder / "keys"),
    }

    verified = deployed_fleet.plangate("audit", "verify", **auditor)
    exported = deployed_fleet.plangate("audit", "export", "--goal", page.goal_id, **auditor)
    with sqlite3.connect(deployed_fleet.folder / "plangate.db") as database:
        database.execute("UPDATE step_runs SET output = '999' WHERE step_id = 'count'")
    tampered = deployed_fleet.plangate("audit", "verify", **auditor)

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert twice.returncode == 2, twice.stdout + twice.stderr
    assert done["status"] == "completed"
    assert verified.returncode == 0, verified.stdout + verified.stderr
    refusals = [
        json.loads(line) for line in exported.stdout.splitlines() if "review.refused" in line
    ]
    # bob's second approval too: the docs promise it, and it left no entry.
    assert [(entry["actor"], entry["data"]["action"]) for entry in refusals] == [
        ("erin", "approve"),
        ("bob", "approve"),
    ]
    assert "has approved plan" in refusals[1]["data"]["reason"]
    assert tampered.returncode == 1
    assert "records broken" in tampered.stderr
    assert "step count of plan" in tampered.stderr


WEAKER_RULE_AFTER_AN_EDIT = {
    "mode": "enforce",
    "rules": [
        {
            "name": "urgent-pages-need-two",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall" && '
            '!(s.args.message == "a quiet note"))',
            "action": "hold",
            "reason": "urgent pages: two people from finance decide",
            "requires_role": "finance",
            "approvals": 2,
        },
        {
            "name": "quiet-notes-need-one",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "a note: one person from finance decides",
            "requires_role": "finance",
        },
    ],
}


def test_an_editor_cannot_approve_alone_an_edit_that_made_the_plan_meet_a_weaker_rule(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance, which alice edits so that it meets a
    rule asking only one (the gate decides every revision afresh),
    When alice approves her own edit, Then she is refused: its editor released it alone (she
    wrote the plan that ran and was its only reviewer);
    When bob approves it, Then it runs, and the signed approval names bob alone.
    """
    policy = write_yaml(tmp_path / "policy.yaml", WEAKER_RULE_AFTER_AN_EDIT)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        edited = _edit_newest(pipeline, goal_id, "alice", "a quiet note")
        with pipeline.store.session() as session:
            assert session.get_one(HoldRow, edited.plan_id).rule == "quiet-notes-need-one"

        with pytest.raises(Forbidden, match=r"alice wrote this revision .* ask another reviewer"):
            pipeline.approve(edited.plan_id, "alice", roles=FINANCE)
        pipeline.approve(edited.plan_id, "bob", roles=FINANCE)

        assert pipeline.wait_for(goal_id).status == "completed"
        assert signed_approvers(pipeline, edited.plan_id) == ("bob",)


def plan_page(browser: Any, url: str, token: str, plan_id: str) -> Any:
    """A new browser session logged in with `token`, on the plan's review page."""
    page = browser.new_context(base_url=url).new_page()
    page.set_default_timeout(15_000)
    page.goto("/reviews")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/reviews")
    page.goto(f"/reviews/{plan_id}")
    return page


def test_the_page_says_who_may_decide_who_approved_and_who_wrote_the_plan(fleet: Fleet) -> None:
    """Given the seed plan held for two approvals from finance,
    When carol (no role) opens it, Then the page says she may read it, not decide it, and
    offers no form (the forms answered 403 only once she had typed her comment);
    When alice approves it in the page, Then it offers her no second approval (that answered
    422 with a CLI hint) but says how far the approval is;
    When bob approves too, Then the headline names both approvers (it named the last alone),
    and the page says who wrote the revision.
    """
    team = fleet.folder / "reviewers.yaml"  # the gate counts approvals by this file
    roles = {"alice": ["finance"], "bob": ["finance"], "carol": []}
    tokens = {name: add_reviewer(team, name, wanted) for name, wanted in roles.items()}
    reviewers = Reviewers.from_file(team)
    with Client(fleet.settings()) as client, serving(client, reviewers) as url:
        state = client.submit(SEED_GOAL).wait(timeout=30, until={"held"})
        plan_id = str(state.plan_id)
        with chromium() as browser:

            def logged_in(name: str) -> Any:
                return plan_page(browser, url, tokens[name], plan_id)

            carol = logged_in("carol")
            no_role = carol.inner_text("#no-role")
            carol_forms = carol.locator("#approve, #reject, #summary").count()
            alice = logged_in("alice")
            author = alice.inner_text("#author")
            alice.click("#approve")
            alice.wait_for_url("**done=approved&seal=*")
            alice_after = (alice.locator("#approve").count(), alice.inner_text("#approved-already"))
            bob = logged_in("bob")
            bob.click("#approve")
            bob.wait_for_url("**done=approved&seal=*")
            eventually(
                lambda: client.status(state.goal_id).status == "completed",
                timeout=30,
                what="the goal completed",
            )
            bob.reload()
            headline = bob.inner_text("#headline")

    assert "needs the role finance, which carol does not have" in " ".join(no_role.split())
    assert carol_forms == 0
    assert author == "planned by playbook:ticket-sla-breach"
    assert alice_after[0] == 0
    assert "You approved this revision: 1 of 2 approvals (alice)" in alice_after[1]
    assert headline == "Completed, approved by alice, bob."


@pytest.mark.redis
@pytest.mark.timeout(120)  # processes of every stage, on a busy machine: slow
def test_over_processes_a_plan_whose_first_approval_counts_again_is_released_by_it(
    fleet: Fleet,
) -> None:
    """Given a page held for two approvals from finance, approved by alice,
    When alice's role is taken away, bob approves (1 of 2: hers no longer counts), and her
    role is given back (2 of 2 now, but nothing tells the gate),
    Then alice approving again releases it: she was told "approved already" and bob too, and
    the plan stayed held, "2 of 2", for good.
    """
    page = held_page(fleet, "alice", "bob")
    page.approve("alice")
    with_role = page.team.read_text()
    page.team.write_text(with_role.replace("  roles:\n  - finance\n", "  roles: []\n", 1))
    assert "1 of 2 approvals (bob)" in page.approve("bob")
    page.team.write_text(with_role)

    again = page.approve("alice")

    assert "1 more needed" not in again
    assert wait_until(fleet, page.goal_id, {"completed", "failed"})["status"] == "completed"


def test_the_page_offers_an_edits_author_no_approval_and_says_why(deployed_fleet: Fleet) -> None:
    """Given the seed plan held for two approvals from finance, and alice (finance) editing it
    in the page,
    When alice opens the revision her edit made,
    Then the page offers her no Approve (a click was refused: she wrote it) but says another
    reviewer approves it, and still lets her reject or edit; bob is offered Approve; and the
    page says it cannot be released: bob alone is left to give the two approvals it needs (it
    was left to expire, nothing said).
    """
    fleet = deployed_fleet  # each stage with a data folder of its own, as deploy/ runs them
    team = fleet.folder / "reviewers.yaml"
    tokens = {name: add_reviewer(team, name, ["finance"]) for name in ("alice", "bob")}
    reviewers = Reviewers.from_file(team)
    # `serve` as deployed: it reads the reviewers file the gate workers read.
    settings = fleet.settings().model_copy(update={"reviewers_file": team})
    with Client(settings) as client, serving(client, reviewers) as url:
        state = client.submit(SEED_GOAL).wait(timeout=30, until={"held"})
        with chromium() as browser:

            def logged_in(name: str, plan_id: str) -> Any:
                return plan_page(browser, url, tokens[name], plan_id)

            alice = logged_in("alice", str(state.plan_id))
            steps = alice.input_value("#steps-json")
            assert "exceeded SLA" in steps
            alice.fill("#steps-json", steps.replace("exceeded SLA", "is over the SLA of"))
            alice.click("#edit")
            alice.wait_for_url("**done=edited&seal=*")
            edited = eventually(
                lambda: (
                    (now := client.status(state.goal_id)).status == "held"
                    and now.plan_id != state.plan_id
                    and now
                ),
                timeout=30,
                what="the edited revision held",
            )
            alice.goto(f"/reviews/{edited.plan_id}")
            alice_offered = alice.locator("#approve").count()
            authored = " ".join(alice.inner_text("#authored").split())
            alice_other_forms = alice.locator("#reject, #edit").count()
            short_of = " ".join(alice.inner_text("#short-of").split())
            bob_offered = logged_in("bob", str(edited.plan_id)).locator("#approve").count()

    assert alice_offered == 0
    assert "You edited this revision" in authored
    assert "other reviewers approve it" in authored  # two approvals, neither hers
    assert alice_other_forms == 2
    assert bob_offered == 1
    # Two approvals by finance reviewers who did not edit it: bob alone is left.
    assert "cannot be released: 2 approvals needed (0 of 2 approvals)" in short_of
    assert "only 1 more (bob) in the reviewers file with the role finance" in short_of


def test_a_hold_sealed_by_a_key_no_longer_trusted_says_to_put_it_back_or_reject(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a page held for two approvals, its hold sealed by the gate's key,
    When the hold is checked with keys that no longer hold that one (its file removed after a
    rotation),
    Then the refusal says the key is no longer trusted, and what to do either way: put it back
    and approve again, or reject; not that the hold was changed after the gate sealed it.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        with pipeline.store.session() as session:
            hold, plan = session.get_one(HoldRow, plan_id), session.get_one(PlanRow, plan_id)
            with pytest.raises(Forbidden) as refused:
                check_sealed(hold, plan, TrustedKeys([]))
            check_sealed(hold, plan, TrustedKeys([load_or_create_signer(settings).public_key]))

    said = str(refused.value)
    assert "was sealed by key ed25519:" in said
    assert ", which the gate no longer trusts; nothing is signed" in said
    assert "add its public key" not in said
    assert "put its public key back in the trusted keys folder and approve again" in said
    assert "if it was revoked, reject the plan and submit the goal again" in said
    assert "not as the gate recorded it" not in said


@pytest.mark.redis
def test_the_page_tells_the_submitter_they_may_not_approve_and_a_refusal_survives_a_reload(
    fleet: Fleet,
) -> None:
    """Given a page carol submitted, held for two approvals from finance, the submitter barred,
    When carol opens it, Then she is told why she may not approve it, and no Approve is offered
    (it was, then answered 403);
    When bob rejects it while alice's page is open and alice then clicks Approve, Then she is
    shown why it was refused on the plan's page after a redirect: reloading it sends nothing
    again (the refusal was the POST's answer, and a reload recorded it a second time).
    """
    team = fleet.folder / "reviewers.yaml"
    roles = {"alice": ["finance"], "bob": ["finance"], "carol": ["finance"]}
    tokens = {name: add_reviewer(team, name, wanted) for name, wanted in roles.items()}
    reviewers = Reviewers.from_file(team)
    with Client(fleet.settings()) as client, serving(client, reviewers) as url:
        state = client.submit(SEED_GOAL, metadata={"submitter": "carol"}).wait(
            timeout=30, until={"held"}
        )
        plan_id = str(state.plan_id)
        with chromium() as browser:
            carol = plan_page(browser, url, tokens["carol"], plan_id)
            barred = " ".join(carol.inner_text("#barred").split())
            carol_approve = carol.locator("#approve").count()
            alice = plan_page(browser, url, tokens["alice"], plan_id)
            bob = plan_page(browser, url, tokens["bob"], plan_id)
            bob.fill("#comment", "not this week")
            bob.click("#reject")
            bob.wait_for_url("**done=rejected&seal=*")
            alice.click("#approve")
            alice.wait_for_url("**refused=*")
            said = alice.inner_text("#outcome")
            alice.reload()
            said_again = alice.inner_text("#outcome")

    store = open_store(fleet.database_url, upgrade=False)
    try:
        refusals = [e for e in audit_entries(store, state.goal_id) if e.kind == "review.refused"]
    finally:
        store.close()
    assert barred == (
        "You submitted this goal, and rule 'pages-need-two-from-finance' bars the goal's "
        "submitter from approving it. You may still reject it or edit it."
    )
    assert carol_approve == 0
    assert "not waiting for review" in said
    assert said_again == said
    assert [e.actor for e in refusals] == ["alice"]
