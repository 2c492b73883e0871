"""What a reviewer reads of a held plan (the API's view, `review show`, `review list`): what
stands in the way of releasing it, who edited it and why, whether it still fits the catalog."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from approval_gate.holds import check_sealed
from approval_gate.review import Review
from plangate.catalog import load_catalog, publish_catalog
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Conflict, Forbidden
from plangate.goal_status import GoalStatus, read_status
from plangate.review_views import Replacement, ReviewDetail, detail_of
from plangate.reviewers import Reviewers, add_reviewer
from plangate.server import create_app
from plangate.signing import TrustedKeys
from plangate.stages import build_review
from plangate.store import AuditRow, HoldRow
from plangate.store.goals import transition
from schemas import Plan, plan_hash
from tests.browser import chromium
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.support import (
    HELD,
    audit_entries,
    eventually,
    only_plan,
    plangate_in,
    plans_of,
    running_pipeline,
)

FINANCE = frozenset({"finance"})
TWO_FROM_FINANCE = """\
mode: enforce
rules:
  - name: pages-need-two-from-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: paging costs money; two people from finance decide
    requires_role: finance
    approvals: 2
"""


@dataclass
class Desk:
    """A running pipeline, its reviewers file, and the review as `serve` and the CLI have it."""

    pipeline: Pipeline
    team: Path
    review: Review
    tokens: dict[str, str]

    def detail(self, plan_id: str) -> ReviewDetail:
        """Return the API's view of a plan (`GET /api/v1/reviews/{plan_id}`)."""
        return detail_of(self.review.get(plan_id), load_catalog(self.pipeline.store))

    def cli(self, *args: str) -> str:
        """Run `plangate ARGS` on the pipeline's store with the reviewers file; return stdout."""
        result = plangate_in(
            self.pipeline.settings.data_dir, *args, PLANGATE_REVIEWERS_FILE=str(self.team)
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def page(self, reviewer: str, plan_id: str, selector: str, *, listed: bool = False) -> str:
        """Return the text of `selector` on the plan's review page (or the list of held plans,
        `listed`), as `reviewer` sees it."""
        settings = self.pipeline.settings.model_copy(update={"reviewers_file": self.team})
        reviewers = Reviewers.from_file(self.team)
        with (
            Client(settings) as client,
            serving_app(create_app(settings, client=client, reviewers=reviewers)) as url,
            chromium() as browser,
        ):
            page = browser.new_page(base_url=url)
            page.goto("/reviews")
            page.fill("#token", self.tokens[reviewer])
            page.click("button[type=submit]")
            page.wait_for_url("**/reviews")
            page.goto("/reviews" if listed else f"/reviews/{plan_id}")
            return " ".join(str(page.inner_text(selector)).split())


def status_of(pipeline: Pipeline, goal_id: str) -> GoalStatus:
    """Return the goal's status as its submitter reads it (`Client.status`, the goals API)."""
    with pipeline.store.snapshot() as session:
        return read_status(session, goal_id)


@pytest.fixture
def desk(settings: Settings, tmp_path: Path) -> Iterator[Desk]:
    """A pipeline holding pages for two approvals from finance; alice and frank are finance."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(TWO_FROM_FINANCE)
    team = tmp_path / "reviewers.yaml"
    tokens = {name: add_reviewer(team, name, sorted(FINANCE)) for name in ("alice", "frank")}
    with running_pipeline(settings, policy_file=policy) as pipeline:
        review = build_review(settings.model_copy(update={"reviewers_file": team}), pipeline.store)
        yield Desk(pipeline, team, review, tokens)


def edited_by(desk: Desk, reviewer: str, comment: str = "", **changes: Any) -> Plan:
    """Submit the seed goal (by bob); have `reviewer` edit its page; return revision 2, held."""
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL, metadata={"submitted_by": "bob"}).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    first = only_plan(pipeline.store, goal_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in first.steps]
    steps[2]["args"] = {"message": changes.get("message", "edited: tickets over SLA")}
    summary = changes.get("summary")
    pipeline.edit(first.plan_id, reviewer, steps, summary=summary, roles=FINANCE, comment=comment)
    second = eventually(
        lambda: next((p for p in plans_of(pipeline.store, goal_id) if p.revision == 2), None),
        what="revision 2",
    )
    pipeline.wait_for(goal_id, HELD, timeout=10)
    return Plan.model_validate(second.body)


def test_a_revision_too_few_reviewers_may_approve_says_it_cannot_be_released(
    desk: Desk,
) -> None:
    """Given alice and frank, the only finance reviewers, and a page bob submitted that alice
    edited (revision 2, held for two approvals from finance),
    When frank approves it,
    Then the view, `review show` and `review list` say it cannot be released: nobody left may
    approve it (alice wrote it, frank approved), add a reviewer or reject it. It said "1 of 2
    approvals (frank)" and waited a day for nobody.
    When carol (finance) is added, Then it says so no more.
    """
    edited = edited_by(desk, "alice")
    before = desk.detail(edited.plan_id).cannot_be_released
    frank = Reviewers.from_file(desk.team).named("frank")
    assert frank is not None
    desk.review.approve(edited.plan_id, "frank", roles=frank.roles, key=frank.token_sha256)

    after = desk.detail(edited.plan_id).cannot_be_released
    shown = " ".join(desk.cli("review", "show", edited.plan_id).split())
    listed = desk.cli("review", "list")
    [summary] = json.loads(desk.cli("review", "list", "--json"))
    on_the_list = desk.page("frank", edited.plan_id, "td.approved", listed=True)
    add_reviewer(desk.team, "carol", sorted(FINANCE))
    once_carol_is_added = desk.detail(edited.plan_id).cannot_be_released

    assert before is not None
    assert "only 1 more (frank)" in before  # two needed: frank alone is left
    assert after == (
        "cannot be released: 2 approvals needed (1 of 2 approvals (frank)), and no reviewer in "
        "the reviewers file with the role finance may still approve it (its editors, the "
        "submitter where the rule bars them, and who approved already may not): add a reviewer "
        "(`plangate reviewers add NAME --role finance`) or reject it"
    )
    assert f"This plan {after}" in shown
    assert "1 of 2 ⚠" in listed
    assert "expires UTC" in listed  # "12-08 09:03" alone was read as a local time
    assert f"⚠ {edited.plan_id[:8]} cannot be released" in listed
    assert summary["cannot_be_released"] == after
    assert on_the_list.startswith("1 of 2 ⚠ cannot be released: 2 approvals needed")
    assert once_carol_is_added is None


def test_the_reviewer_deciding_an_edit_reads_who_edited_it_and_why(desk: Desk) -> None:
    """Given a page alice edited, saying why ("the order says 2000"),
    When frank reads the revision her edit made (the API's view, `review show`, the page),
    Then each names alice as its editor, with her comment: it was only in the audit log and on
    /goals/{id}, never where the edit is decided. A planner's revision names no editor.
    """
    why = "the order says 2000, not 50"
    edited = edited_by(desk, "alice", comment=why)
    first = plans_of(desk.pipeline.store, edited.goal_id)[0]

    detail = desk.detail(edited.plan_id)
    shown = " ".join(desk.cli("review", "show", edited.plan_id).split())
    on_page = desk.page("frank", edited.plan_id, "#edited-by")
    planned = desk.detail(first.plan_id)

    assert (detail.edited_by, detail.edit_comment) == ("alice", why)
    assert f"Edited by alice: {why}" in shown
    assert on_page == f"Edited by alice from revision 1: {why}"
    assert (planned.edited_by, planned.edit_comment) == (None, None)


def test_a_held_plan_that_no_longer_fits_the_catalog_says_so_and_its_approval_is_refused(
    desk: Desk,
) -> None:
    """Given a page held for finance, and then `notify_oncall` published with a new required
    argument, `reason` (executors of a new version),
    When frank reads it and approves it,
    Then the view, `review show`, `review list` and the goal's status (its submitter's view)
    say it no longer fits the catalog and why, and the approval is refused (Conflict, 409)
    with the same words: the plan stays held, to be edited or rejected. It was approved, then
    failed by the executor, the approval wasted.
    When alice edits in a reason, Then the revision she made fits and says nothing, nor does
    the one it replaced, which nobody is asked to approve any more.
    """
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan = only_plan(pipeline.store, goal_id)
    notify = load_catalog(pipeline.store)["notify_oncall"]
    schema = dict(notify.args_schema)
    schema["properties"] = {**schema["properties"], "reason": {"type": "string"}}
    schema["required"] = [*schema.get("required", []), "reason"]
    publish_catalog(pipeline.store, [notify.model_copy(update={"args_schema": schema})])
    frank = Reviewers.from_file(desk.team).named("frank")
    assert frank is not None

    problem = desk.detail(plan.plan_id).catalog_problem
    shown = " ".join(desk.cli("review", "show", plan.plan_id).split())
    listed = desk.cli("review", "list")
    submitter_sees = status_of(pipeline, goal_id).catalog_problem
    status_says = " ".join(desk.cli("status", goal_id).split())
    with pytest.raises(Conflict) as refused:
        desk.review.approve(plan.plan_id, "frank", roles=frank.roles, key=frank.token_sha256)
    still = desk.review.get(plan.plan_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in plan.steps]
    steps[2]["args"] = {**steps[2]["args"], "reason": "tickets over SLA"}
    # Through the review as `serve` has it: it validates edits against the store's catalog.
    desk.review.edit(plan.plan_id, "alice", steps, roles=FINANCE, comment="it needs a reason")
    fixed = plans_of(pipeline.store, goal_id)[1]

    assert problem == (
        "no longer fits the tool catalog (step 'notify': args: 'reason' is a required property "
        "[bad_args]): approving it would fail when it runs; edit it or reject it"
    )
    assert f"This plan {problem}" in shown
    assert f"⚠ {plan.plan_id[:8]} {problem}" in " ".join(listed.split())
    assert str(refused.value) == f"plan {plan.plan_id} {problem}"
    # Its submitter, polling the goal, is told too: it waited for a hold that could not end.
    assert submitter_sees == problem
    assert f"cannot be approved as it is: it {problem}" in status_says
    assert (still.goal.status, still.approvers) == ("held", ())
    assert desk.detail(fixed.plan_id).catalog_problem is None
    assert status_of(pipeline, goal_id).catalog_problem is None  # the edit is the newest
    # Revision 1, replaced, waits for nobody: "approving it would fail" is said of none.
    assert desk.detail(plan.plan_id).catalog_problem is None


@contextmanager
def serving(desk: Desk) -> Iterator[str]:
    """Run `serve`'s app on the pipeline's store with the reviewers file; yield its URL."""
    settings = desk.pipeline.settings.model_copy(update={"reviewers_file": desk.team})
    reviewers = Reviewers.from_file(desk.team)
    with (
        Client(settings) as client,
        serving_app(create_app(settings, client=client, reviewers=reviewers)) as url,
    ):
        yield url


def api_answer(url: str, token: str, payload: object = None) -> tuple[int, Any]:
    """Return what the API answers at `url` (a POST of `payload`, if given), a refusal too."""
    request = urllib.request.Request(
        url,
        data=None if payload is None else json.dumps(payload).encode(),
        method="GET" if payload is None else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


def test_a_plan_whose_hold_carries_no_seal_says_it_cannot_be_released_and_refuses_approvals(
    desk: Desk, tmp_path: Path
) -> None:
    """Given a page held for two approvals from finance, its hold without a seal as migration
    0014 left the holds of a gate of an older release (one still running after the upgrade
    goes on making them),
    When frank reads it (the API's view, `review show`, `review list`, the pages),
    Then each says it cannot be released, why, and what to do: edit it with the same plan
    (reject and submit again fails a sender using an idempotency key). Nothing said so: serve
    recorded "1 of 2 approvals (frank); 1 more needed", then
    "the gate signs it and releases the plan", and only then did the gate refuse.
    When frank approves it through `serve`'s API and with `plangate review approve`,
    Then each approval is refused up front with those words (409; the CLI exits 2), audited
    as a refusal, and none is counted; the gate refuses such a hold in the same words.
    When alice rejects it, Then the rejection is taken.
    """
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan = only_plan(pipeline.store, goal_id)
    with pipeline.store.session() as session:  # as migration 0014 found an older gate's hold
        session.execute(
            text("UPDATE holds SET seal = NULL WHERE plan_id = :plan_id"), {"plan_id": plan.plan_id}
        )
    token = tmp_path / "frank.token"
    token.write_text(desk.tokens["frank"])

    bar = desk.detail(plan.plan_id).cannot_be_released
    shown = " ".join(desk.cli("review", "show", plan.plan_id).split())
    listed = " ".join(desk.cli("review", "list").split())
    on_the_list = desk.page("frank", plan.plan_id, "td.approved", listed=True)
    on_its_page = desk.page("frank", plan.plan_id, "#short-of")
    with serving(desk) as url:
        reviews = f"{url}/api/v1/reviews/{plan.plan_id}"
        viewed, view = api_answer(reviews, desk.tokens["frank"])
        body = {"plan_hash": plan_hash(plan)}
        answered, refusal = api_answer(f"{reviews}/approve", desk.tokens["frank"], body)
        by_cli = plangate_in(
            pipeline.settings.data_dir,
            *("review", "approve", plan.plan_id, "--server", url, "--token-file", str(token)),
        )
    with pipeline.store.session() as session, pytest.raises(Forbidden) as gate_says:
        check_sealed(session.get_one(HoldRow, plan.plan_id), plan, TrustedKeys([]))
    still = desk.review.get(plan.plan_id)
    refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]
    desk.review.reject(plan.plan_id, "alice", "held before the upgrade", roles=FINANCE)

    assert bar == (
        "cannot be released: its hold carries no seal (a gate of a release before schema 0014 "
        "held it), and the gate signs no approval of an unsealed hold: edit it with the same "
        "plan (`plangate review edit PLAN --file plan.json`: a new revision, which the gate "
        "holds and seals), or reject it and submit the goal again (not for senders using an "
        "idempotency key: their retry answers the rejected goal)"
    )
    assert f"This plan {bar}" in shown
    assert "0 of 2 ⚠" in listed
    assert f"⚠ {plan.plan_id[:8]} {bar}" in listed
    assert on_the_list.startswith("0 of 2 ⚠ cannot be released: its hold carries no seal")
    assert on_its_page == f"This plan {bar}."
    assert (viewed, view["cannot_be_released"]) == (200, bar)
    assert (answered, refusal["error"]) == (409, f"plan {plan.plan_id} {bar}")
    assert by_cli.returncode == 2, by_cli.stdout
    assert f"plan {plan.plan_id} {bar}" in " ".join(by_cli.stderr.split())
    assert [e.data["action"] for e in refused] == ["approve", "approve"]
    assert {e.data["reason"] for e in refused} == {f"plan {plan.plan_id} {bar}"}
    assert (still.goal.status, still.approvers) == ("held", ())
    assert str(gate_says.value) == f"plan {plan.plan_id} {bar}; nothing is signed"
    assert desk.review.get(plan.plan_id).goal.status == "rejected"


def test_an_edit_that_kept_the_summary_says_whose_words_it_is(desk: Desk) -> None:
    """Given a page alice edited without touching its summary (the planner's words over the
    steps she changed),
    When frank reads the revision (the API's view, `review show`, the page),
    Then each says the summary is from revision 1, not changed by the edit: it read as if it
    described the edited steps. An edit that rewrote the summary says nothing of the kind.
    """
    kept = edited_by(desk, "alice")
    rewritten = edited_by(desk, "alice", summary="page on-call: the SLA is breached")

    detail = desk.detail(kept.plan_id)
    shown = " ".join(desk.cli("review", "show", kept.plan_id).split())
    on_page = desk.page("frank", kept.plan_id, "#summary-from")

    assert detail.summary_from_revision == 1
    assert detail.summary == only_plan_summary(desk, kept.goal_id)
    assert "(summary from revision 1, not changed by the edit)" in shown
    assert on_page.startswith("Summary from revision 1, not changed by the edit")
    assert desk.detail(rewritten.plan_id).summary_from_revision is None


def test_the_held_list_shows_each_goal_on_one_line_and_the_page_who_says_they_submitted_it(
    desk: Desk,
) -> None:
    """Given two held pages, one whose goal ends in a word of 400 letters, one whose last
    request comes after 20 line breaks, submitted as "security-team (verified)",
    When alice reads the list of held plans, Then the first goal's cell is cut inside the long
    word (Jinja's cut dropped the whole word: different goals read alike), and the second's
    line breaks show as `\\n` on one line, its last request in sight;
    When she opens the second plan, Then its submitter is said to be what the submitter wrote,
    not a fact (it stood beside the policy's version as if checked).
    """
    pipeline = desk.pipeline
    long_word = pipeline.submit(f"{SEED_GOAL} {'W' * 400}").goal_id
    many_lines = pipeline.submit(
        SEED_GOAL + "\n" * 20 + "and ALSO page the CEO",
        metadata={"submitted_by": "security-team (verified)"},
    ).goal_id
    for goal_id in (long_word, many_lines):
        pipeline.wait_for(goal_id, HELD, timeout=10)

    listed = desk.page("alice", "", "table", listed=True)
    submitter = desk.page("alice", only_plan(pipeline.store, many_lines).plan_id, "#hold-submitter")

    assert f"{SEED_GOAL} {'W' * 60}" in listed
    assert SEED_GOAL + "\\n" * 20 + "and ALSO page the CEO" in listed
    assert submitter == (
        "security-team (verified) (as the submitter said: anyone who submits may write it)"
    )


def only_plan_summary(desk: Desk, goal_id: str) -> str:
    """The summary the planner wrote for the goal's first revision."""
    return str(plans_of(desk.pipeline.store, goal_id)[0].body["summary"])


def test_a_plan_the_gate_held_again_after_refusing_its_approvals_says_why(desk: Desk) -> None:
    """Given a page held for two approvals,
    When it is approved and the gate refuses to release it, holding it again (as it does when
    an approver no longer counts, or the hold's key is no longer trusted: staged here with the
    gate's own words),
    Then the view, `review show` and `review list` say it is held again and why: they read
    "2 of 2 approvals" and nothing more while it stayed held; a plan held only by the policy
    says nothing of the kind.
    """
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    fresh = desk.detail(plan_id).refused_by_gate
    refusal = (
        "the approval by alice was refused: the hold of plan x was sealed by key ed25519:ab, "
        "which the gate no longer trusts; nothing is signed"
    )
    with pipeline.store.session() as session:  # approved by people, then refused by the gate
        transition(session, goal_id, "approved", by="person", actor="alice", reason="approved")
        transition(session, goal_id, "held", by="gate", actor="gate", reason=refusal)

    view = desk.detail(plan_id)
    shown = desk.cli("review", "show", plan_id)
    listed = desk.cli("review", "list")

    assert fresh is None
    assert view.refused_by_gate == refusal
    assert "⚠ Held again: the approval by alice was refused" in " ".join(shown.split())
    assert "the approval by alice was refused" in " ".join(listed.split())


def at_of(entry: AuditRow) -> datetime:
    """Return when an audit entry was written."""
    return datetime.fromisoformat(entry.at)


def test_a_decided_plan_says_when_it_was_held_not_when_its_goal_last_moved(desk: Desk) -> None:
    """Given a page held for two approvals from finance,
    When alice and frank approve it and it runs to completion,
    Then its view's `held_since` is still when the gate held it (its `goal.held` entry), before
    either approval: it read the goal's last move, the completion, as if it had been held then.
    """
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    waiting = desk.detail(plan_id).held_since
    for name in ("alice", "frank"):
        pipeline.approve(plan_id, name, roles=FINANCE)
    pipeline.wait_for(goal_id, {"completed"}, timeout=10)

    view = desk.detail(plan_id)
    [held] = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.held"]
    [first_approval, *_] = [e for e in audit_entries(pipeline.store, goal_id) if e.actor == "alice"]

    assert view.goal_status == "completed"
    assert view.held_since == waiting
    assert timedelta(0) <= at_of(held) - view.held_since < timedelta(seconds=5)
    assert view.held_since < at_of(first_approval)


def test_a_rejected_plan_says_who_rejected_it_and_why_as_its_page_does(desk: Desk) -> None:
    """Given a page held for finance,
    When frank rejects it, saying why,
    Then its view (the API's, `review show --json`) says so: reject, by frank, his comment and
    when; `review show` and the page say it too. The view had no word of who rejected it.
    A plan still waiting says no decision.
    """
    pipeline = desk.pipeline
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    waiting = desk.detail(plan_id)
    desk.review.reject(plan_id, "frank", "not during the change freeze", roles=FINANCE)
    pipeline.wait_for(goal_id, {"rejected"}, timeout=10)

    view = desk.detail(plan_id)
    shown = json.loads(desk.cli("review", "show", plan_id, "--json"))
    text = " ".join(desk.cli("review", "show", plan_id).split())
    headline = desk.page("alice", plan_id, "#headline")
    [rejected] = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.rejected"]

    assert (waiting.decision, waiting.replaced_by) == (None, None)
    assert view.decision is not None
    assert (view.decision.action, view.decision.decided_by, view.decision.comment) == (
        "reject",
        "frank",
        "not during the change freeze",
    )
    assert abs(at_of(rejected) - view.decision.decided_at) < timedelta(seconds=5)
    assert view.replaced_by is None
    assert shown["decision"] == view.decision.model_dump(mode="json")
    assert "Decided: reject by frank — not during the change freeze" in text
    assert headline == "Rejected by frank: it will not run."


def test_a_revision_an_edit_replaced_says_by_which_and_whose_edit(desk: Desk) -> None:
    """Given a page alice edited, saying why (revision 2, held),
    When a reviewer reads revision 1 (the API's view, `review show`, the page),
    Then it says revision 2 replaced it and that alice's edit decided it, with her comment:
    it read "0 of 2 approvals" and nothing else, while the page said "Replaced by revision 2"
    (and no more: not who, nor why). Revision 2, waiting, names neither.
    """
    why = "the message named the wrong team"
    edited = edited_by(desk, "alice", comment=why)
    first = plans_of(desk.pipeline.store, edited.goal_id)[0]

    view = desk.detail(first.plan_id)
    newest = desk.detail(edited.plan_id)
    text = " ".join(desk.cli("review", "show", first.plan_id).split())
    headline = desk.page("frank", first.plan_id, "#headline")

    assert view.replaced_by == Replacement(plan_id=edited.plan_id, revision=2)
    assert view.decision is not None
    assert (view.decision.action, view.decision.decided_by, view.decision.comment) == (
        "edit",
        "alice",
        why,
    )
    assert f"Replaced by revision 2 (plan {edited.plan_id}): review that one" in text
    assert f"Decided: edit by alice — {why}" in text
    assert headline == f"Replaced by revision 2 (edited by alice: {why})."
    assert (newest.replaced_by, newest.decision) == (None, None)
