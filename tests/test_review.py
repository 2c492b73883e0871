"""Human review: edits become new revisions the policy decides again; races, stale hashes,
roles, and the webhook that tells people a plan waits for them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from approval_gate.revisions import plan_diff
from plangate.catalog import load_catalog
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.errors import Conflict, Forbidden, InputInvalid, PlanInvalid
from plangate.review_views import detail_of, summary_of
from plangate.reviewers import add_reviewer, read_file, remove_reviewer
from plangate.store import ApprovalRow, DecisionRow, PlanRow
from schemas.hashing import plan_hash
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_entries,
    audit_kinds,
    eventually,
    only_plan,
    outer_environment,
    plangate_in,
    plans_of,
    running_pipeline,
    step_runs,
    write_yaml,
)

REPO = str(Path(__file__).resolve().parents[1])
FINANCE_POLICY = {
    "mode": "enforce",
    "rules": [
        {
            "name": "approve-read-only",
            "match": 'plan.steps.all(s, s.effect == "read")',
            "action": "approve",
            "reason": "every step only reads",
        },
        {
            "name": "hold-pages-for-finance",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "paging costs money; finance decides",
            "requires_role": "finance",
        },
    ],
}


def held_seed(pipeline: Pipeline) -> tuple[str, Any]:
    """Submit the seed goal and wait until its first revision is held; return goal id and plan."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    return goal_id, only_plan(pipeline.store, goal_id)


def steps_of(plan: Any) -> list[dict[str, Any]]:
    return [step.model_dump(mode="json", exclude_defaults=True) for step in plan.steps]


def policy_decision(pipeline: Pipeline, plan_id: str) -> DecisionRow:
    with pipeline.store.session() as session:
        return session.execute(
            select(DecisionRow).where(DecisionRow.plan_id == plan_id, DecisionRow.stage == "policy")
        ).scalar_one()


def approvals(pipeline: Pipeline) -> list[tuple[str, str]]:
    with pipeline.store.session() as session:
        rows = session.execute(select(ApprovalRow)).scalars()
        return [(row.plan_id, row.plan_hash) for row in rows]


def test_edit_swapping_in_a_read_tool_is_decided_again_and_approved_by_policy(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held because its last step pages on-call,
    When bob edits it to call a read tool instead,
    Then revision 2 (a new plan id, planned by `edit:bob`) is decided again by the policy,
    which approves it; it runs, nobody is paged, and revision 1 can no longer be approved.
    """
    goal_id, first = held_seed(pipeline)
    steps = steps_of(first)
    steps[2] = {"id": "notify", "tool": "ticket_count"}

    pipeline.edit(first.plan_id, "bob", steps, summary="count twice instead of paging")

    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "completed", goal.status_reason
    revisions = plans_of(pipeline.store, goal_id)
    assert [(p.revision, p.planner) for p in revisions][1] == (2, "edit:bob")
    second = revisions[1]
    assert second.plan_id != first.plan_id
    assert second.body["summary"] == "count twice instead of paging"
    decision = policy_decision(pipeline, second.plan_id)
    assert (decision.action, decision.rule) == ("approve", "approve-read-only")
    assert step_runs(pipeline.store, second.plan_id)["notify"] == "succeeded"
    assert read_notifications() == []
    assert "plan.edited" in audit_kinds(pipeline.store, goal_id)
    with pytest.raises(Conflict, match="revision 2 replaced it"):
        pipeline.review.approve(first.plan_id, "alice")


def test_edit_changing_an_argument_is_held_again_and_runs_exactly_as_edited(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held,
    When bob changes the page's message,
    Then revision 2 is held again by the policy (it still writes), the diff shows the change,
    no approval exists for it until alice approves it, and what runs is the edited message.
    """
    goal_id, first = held_seed(pipeline)
    steps = steps_of(first)
    steps[2]["args"] = {"message": "edited: tickets over SLA"}

    pipeline.edit(first.plan_id, "bob", steps, expected_hash=None)

    eventually(lambda: len(plans_of(pipeline.store, goal_id)) == 2 or None, what="revision 2")
    pipeline.wait_for(goal_id, HELD, timeout=5)
    second = plans_of(pipeline.store, goal_id)[1]
    assert policy_decision(pipeline, second.plan_id).action == "hold"
    held = pipeline.review.get(second.plan_id)
    assert held.previous is not None
    assert held.previous.plan_id == first.plan_id
    assert pipeline.review.get(first.plan_id).plan.plan_id == first.plan_id
    assert held.expires_at is not None
    diff = plan_diff(held.previous, held.plan)
    added = [line for line in diff.splitlines() if line.startswith("+ ")]
    assert added == ['+        "message": "edited: tickets over SLA"']
    assert second.plan_hash != plans_of(pipeline.store, goal_id)[0].plan_hash
    assert approvals(pipeline) == []

    pipeline.approve(second.plan_id, "alice", expected_hash=second.plan_hash)

    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "completed", goal.status_reason
    assert approvals(pipeline) == [(second.plan_id, second.plan_hash)]
    assert [n["message"] for n in read_notifications()] == ["edited: tickets over SLA"]


def test_an_invalid_edit_is_refused_and_the_plan_stays_held(pipeline: Pipeline) -> None:
    """Given the seed plan held,
    When bob edits in a tool the catalog does not have,
    Then PlanInvalid names the problem, and revision 1 is still held and can be approved.
    """
    goal_id, first = held_seed(pipeline)
    steps = steps_of(first)
    steps[2] = {"id": "notify", "tool": "delete_everything"}

    with pytest.raises(PlanInvalid, match="delete_everything"):
        pipeline.edit(first.plan_id, "bob", steps)

    assert [p.revision for p in plans_of(pipeline.store, goal_id)] == [1]
    assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
    pipeline.approve(first.plan_id, "alice")
    assert pipeline.wait_for(goal_id, timeout=5).status == "completed"


def test_two_reviewers_racing_on_one_revision_one_wins_the_other_gets_conflict(
    pipeline: Pipeline,
) -> None:
    """Given held plans, each raced by alice approving and bob rejecting at the same moment,
    When they decide together (five races),
    Then in each exactly one wins and the other gets Conflict.
    """
    for _ in range(5):
        goal_id, plan = held_seed(pipeline)
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def decide(
            who: str,
            plan_id: str = plan.plan_id,
            barrier: Any = barrier,
            outcomes: dict[str, str] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                if who == "alice":
                    pipeline.approve(plan_id, who)
                else:
                    pipeline.reject(plan_id, who, "not now")
                outcomes[who] = "won"
            except Conflict:
                outcomes[who] = "conflict"

        threads = [threading.Thread(target=decide, args=(who,)) for who in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

        assert sorted(outcomes.values()) == ["conflict", "won"], outcomes
        winner = next(who for who, outcome in outcomes.items() if outcome == "won")
        expected = "completed" if winner == "alice" else "rejected"
        assert pipeline.wait_for(goal_id, timeout=5).status == expected


def test_approving_with_a_stale_hash_is_a_conflict(pipeline: Pipeline) -> None:
    """Given the seed plan held,
    When alice approves it naming a hash other than the plan's,
    Then Conflict, and the plan stays held.
    """
    goal_id, plan = held_seed(pipeline)

    with pytest.raises(Conflict, match="the hash given does not match plan"):
        pipeline.approve(plan.plan_id, "alice", expected_hash="sha256:" + "0" * 64)

    assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
    assert approvals(pipeline) == []


@pytest.mark.parametrize(
    "written", [str.upper, lambda digest: digest.removeprefix("sha256:")], ids=["upper", "bare"]
)
def test_approving_with_the_plans_hash_written_otherwise_runs_it(
    pipeline: Pipeline, written: Callable[[str], str]
) -> None:
    """Given the seed plan held,
    When alice approves it giving its hash's 64 hex digits alone (as copied from a page), or
    in capitals, Then the plan runs: it was refused as "does not match" the very same hash.
    """
    goal_id, plan = held_seed(pipeline)

    pipeline.approve(plan.plan_id, "alice", expected_hash=written(plan_hash(plan)))

    assert pipeline.wait_for(goal_id, timeout=10).status == "completed"


def test_a_rule_requiring_a_role_refuses_a_reviewer_without_it(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a policy whose holding rule requires the role `finance`,
    When bob (no roles) approves or edits, and then carol (finance) approves,
    Then bob is Forbidden both times, and carol's approval runs the plan.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id, plan = held_seed(pipeline)
        held = pipeline.review.get(plan.plan_id)
        assert held.required_role == "finance"

        with pytest.raises(Forbidden, match="requires the role 'finance'"):
            pipeline.approve(plan.plan_id, "bob")
        with pytest.raises(Forbidden):
            pipeline.edit(plan.plan_id, "bob", steps_of(plan), summary="mine now")
        with pytest.raises(Forbidden):
            pipeline.approve(plan.plan_id, "bob", roles=frozenset({"sre"}))

        pipeline.approve(plan.plan_id, "carol", roles=frozenset({"finance"}))

        goal = pipeline.wait_for(goal_id, timeout=5)
        assert goal.status == "completed", goal.status_reason


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook receiver: its URL and the JSON bodies it has received."""
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_receives_the_held_notification(
    settings: Settings, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Given PLANGATE_WEBHOOK_URL set to a local receiver and a public URL,
    When the seed plan is held,
    Then the receiver gets one JSON POST with a Slack-style text carrying the review link.
    """
    url, received = webhook
    public = "https://review.example.test"
    with running_pipeline(settings, webhook_url=url, public_url=public) as pipeline:
        goal_id, plan = held_seed(pipeline)

        body = eventually(lambda: received[0] if received else None, what="the webhook call")

    link = f"{public}/reviews/{plan.plan_id}"
    assert body["goal_id"] == goal_id
    assert body["plan_id"] == plan.plan_id
    assert body["revision"] == 1
    assert body["rule"] == "hold-writes"
    assert body["reason"] == "the plan writes; a person must approve it"
    assert body["review_url"] == link
    assert link in body["text"]
    assert len(received) == 1


def test_a_dead_webhook_does_not_stop_the_gate(settings: Settings) -> None:
    """Given PLANGATE_WEBHOOK_URL pointing at a port nobody listens on,
    When the seed goal is submitted and approved,
    Then it is held and, approved, completes as usual.
    """
    with running_pipeline(settings, webhook_url="http://127.0.0.1:9/hook") as pipeline:
        goal_id, plan = held_seed(pipeline)
        pipeline.approve(plan.plan_id, "alice")
        assert pipeline.wait_for(goal_id, timeout=5).status == "completed"


def cli_env(pipeline: Pipeline, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `plangate` process using this pipeline's store."""
    inherited = outer_environment()
    return inherited | {
        "PLANGATE_DATA_DIR": str(pipeline.settings.data_dir),
        "PLANGATE_BROKER_URL": "memory://",
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PYTHONPATH": REPO,  # this checkout, whatever else is installed
        **extra,
    }


def reviewer_env(tmp_path: Path, name: str, roles: list[str] | None = None) -> dict[str, str]:
    """Add `name` to a reviewers file; return the variables that make the CLI act as them."""
    path = tmp_path / "reviewers.yaml"
    if path.exists() and name in {r.name for r in read_file(path)}:
        remove_reviewer(path, name)  # a new token for them: the old one is not kept
    token = add_reviewer(path, name, roles or [])
    return {"PLANGATE_REVIEWERS_FILE": str(path), "PLANGATE_REVIEWER_TOKEN": token}


def plangate(env: dict[str, str], *args: str) -> Any:
    """Run `plangate ARGS`; return its JSON output, failing the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_review_list_json_shows_the_held_plan(pipeline: Pipeline, tmp_path: Path) -> None:
    """Given the seed plan held in the store, with its dry run made,
    When `plangate review list --json` and `review show ID --json` run in another process,
    Then they print what the API answers (`GET /api/v1/reviews`, `/{plan_id}`): the plan,
    its steps with their effect, the policy's decision, when it expires and the preview.
    """
    goal_id, plan = held_seed(pipeline)
    eventually(lambda: pipeline.review.get(plan.plan_id).preview, what="the dry run")
    env = cli_env(pipeline, tmp_path)

    listed = plangate(env, "review", "list", "--json")
    shown = plangate(env, "review", "show", plan.plan_id, "--json")

    catalog = load_catalog(pipeline.store)
    held = pipeline.review.get(plan.plan_id)
    assert listed == [summary_of(held, catalog).model_dump(mode="json")]
    assert shown == detail_of(held, catalog).model_dump(mode="json")
    assert listed[0]["goal_id"] == goal_id
    assert listed[0]["tools"] == [s.tool for s in plan.steps]
    assert [(s["tool"], s["effect"]) for s in shown["steps"]] == [
        (step.tool, catalog[step.tool].effect) for step in plan.steps
    ]
    assert shown["steps"][-1]["effect"] == "write"
    assert shown["policy"]["rule"] == "hold-writes"
    assert shown["expires_at"]
    assert shown["previous_revision"] is None
    assert shown["preview_state"] == "ready"
    assert [(s["step_id"], s["status"]) for s in shown["preview"]] == [
        ("count", "ran"),
        ("sla", "ran"),
        ("notify", "previewed"),
    ]


def test_review_show_prints_the_preview_beside_the_plan(pipeline: Pipeline, tmp_path: Path) -> None:
    """Given the seed plan held and previewed,
    When `plangate review show ID` runs,
    Then it prints the steps and the preview: the reads' outputs and the page it would send.
    """
    _, plan = held_seed(pipeline)
    eventually(lambda: pipeline.review.get(plan.plan_id).preview, what="the dry run")

    result = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "show", plan.plan_id],
        capture_output=True,
        text=True,
        env=cli_env(pipeline, tmp_path, COLUMNS="200"),
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "Preview (a dry run: reads ran for real, nothing was written)" in result.stdout
    assert "page the on-call engineer: 'Ticket count 128 exceeded SLA 100'" in result.stdout
    assert read_notifications() == []


def test_review_edit_opens_the_editor_and_stores_the_next_revision(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given the seed plan held, an $EDITOR that rewrites the page's message, and bob's token,
    When `plangate review edit ID --json` runs,
    Then revision 2 with the new message, planned by `edit:bob`, is stored and proposed.
    """
    goal_id, plan = held_seed(pipeline)
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "draft = json.load(open(path))\n"
        "draft['steps'][2]['args']['message'] = 'from the editor'\n"
        "json.dump(draft, open(path, 'w'))\n",
        encoding="utf-8",
    )
    env = cli_env(
        pipeline, tmp_path, EDITOR=f"{sys.executable} {editor}", **reviewer_env(tmp_path, "bob")
    )

    result = plangate(env, "review", "edit", plan.plan_id, "--json")

    assert (result["status"], result["revision"]) == ("proposed", 2)
    assert result["message"].startswith("edit by bob recorded as a new revision")
    revisions = plans_of(pipeline.store, goal_id)
    assert result["newest_plan_id"] == revisions[1].plan_id
    assert [(p.revision, p.planner) for p in revisions][1] == (2, "edit:bob")
    assert revisions[1].body["steps"][2]["args"] == {"message": "from the editor"}


def test_review_approve_in_another_process_records_the_reviewer(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given the seed plan held, and alice (finance) in the reviewers file,
    When `plangate review approve ID --hash HASH --json` runs with alice's token,
    Then the approval is recorded as alice's, with her roles from the file, and the answer
    says the gate signs it and releases the plan.
    """
    goal_id, plan = held_seed(pipeline)
    env = cli_env(pipeline, tmp_path, **reviewer_env(tmp_path, "alice", ["finance"]))
    digest = plans_of(pipeline.store, goal_id)[0].plan_hash

    result = plangate(env, "review", "approve", plan.plan_id, "--hash", digest, "--json")

    assert result["message"] == (
        "approval by alice recorded; the gate signs it and releases the plan"
    )
    assert (result["plan_id"], result["goal_id"]) == (plan.plan_id, goal_id)
    assert result["status"] == "approved"
    with pipeline.store.session() as session:
        human = session.execute(
            select(DecisionRow).where(
                DecisionRow.plan_id == plan.plan_id, DecisionRow.stage == "human"
            )
        ).scalar_one()
        assert (human.action, human.decided_by, human.roles) == ("approve", "alice", ["finance"])


def test_the_short_ids_run_prints_are_taken_wherever_an_id_is(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given the seed plan held, and its ids cut to the 8 characters `plangate run` prints,
    When `review show`, `status` and `goals cancel` are given them,
    Then they show that plan and that goal with its plan, and cancel that goal; a start
    shorter than 6 characters is no id.
    """
    goal_id, plan = held_seed(pipeline)
    env = cli_env(pipeline, tmp_path, **reviewer_env(tmp_path, "alice"))

    shown = plangate(env, "review", "show", plan.plan_id[:8], "--json")
    status = plangate(env, "status", goal_id[:8], "--json")
    too_short = subprocess.run(
        [sys.executable, "-m", "plangate", "status", goal_id[:4]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    cancelled = plangate(env, "goals", "cancel", goal_id[:8], "--json")

    assert shown["plan_id"] == plan.plan_id
    assert status["goal_id"] == goal_id
    assert status["plan_id"] == plan.plan_id
    assert too_short.returncode == 2
    assert f"no goal '{goal_id[:4]}' (a short id needs 6 characters)" in too_short.stderr
    assert cancelled["status"] == "cancelled"
    assert plangate(env, "status", goal_id, "--json")["status"] == "cancelled"


def test_review_list_fits_80_columns(pipeline: Pipeline, tmp_path: Path) -> None:
    """At 80 columns, `review list` shows each held plan on one line: its short id, the goal
    elided with …, the rule, approvals so far and the expiry; no line is wider than 80."""
    _, plan = held_seed(pipeline)
    env = cli_env(pipeline, tmp_path, COLUMNS="80", **reviewer_env(tmp_path, "alice"))

    listed = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, listed.stdout
    [row] = [line for line in lines if plan.plan_id[:8] in line]
    assert "Check Jira" in row
    assert "…" in row
    assert "hold-writes" in row
    assert "0 of 1" in row


def test_review_edit_of_a_replaced_revision_is_refused_before_the_editor_opens(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given the seed plan held, then edited into revision 2 (held again),
    When `plangate review edit` names revision 1 (its editor would touch nothing),
    Then it is refused in one line naming the newest revision, and no editor opens: it opened
    the old plan and said "no change; nothing submitted"."""
    goal_id, plan = held_seed(pipeline)
    steps = steps_of(plan)
    steps[2]["args"]["message"] = "edited first"
    pipeline.edit(plan.plan_id, "carol", steps, expected_hash=None)
    newest = eventually(lambda: plans_of(pipeline.store, goal_id)[1:], 5, "revision 2")[0]
    pipeline.wait_for(goal_id, HELD, timeout=5)
    opened = tmp_path / "opened"
    editor = tmp_path / "editor.py"
    editor.write_text(f"open({str(opened)!r}, 'w').close()\n", encoding="utf-8")
    env = cli_env(
        pipeline, tmp_path, EDITOR=f"{sys.executable} {editor}", **reviewer_env(tmp_path, "bob")
    )
    extra_key = tmp_path / "edit.json"
    extra_key.write_text(json.dumps({"steps": steps, "colour": "red"}), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "edit", plan.plan_id],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    extra = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "edit", newest.plan_id, "--file", extra_key],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: plan {plan.plan_id} was replaced by plan {newest.plan_id}; edit that one"
    ]
    assert not opened.exists()
    assert extra.returncode == 2
    assert extra.stderr.splitlines() == [
        f'error: {extra_key} holds "colour": an edit has only "summary" and "steps"'
    ]
    assert len(plans_of(pipeline.store, goal_id)) == 2


def test_a_refused_decision_is_an_audit_entry_naming_who_tried_what_and_why(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan held for the role `finance`,
    When bob (no roles) tries to approve it and then to edit it,
    Then each attempt is an audit entry of the goal (`review.refused`, by bob, the action and
    the reason), and the plan stays held: the refusals left no trace, though the gate's
    documentation says every refusal is an entry.
    """
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id, plan = held_seed(pipeline)
        with pytest.raises(Forbidden):
            pipeline.approve(plan.plan_id, "bob")
        with pytest.raises(Forbidden):
            pipeline.edit(plan.plan_id, "bob", steps_of(plan), summary="mine now")
        with pytest.raises(Forbidden):  # by the start of its id, as `plangate review` takes it
            pipeline.approve(plan.plan_id[:8], "bob")

        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]
        assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"

    assert [(e.actor, e.data["action"], e.data["plan_id"]) for e in refused] == [
        ("bob", "approve", plan.plan_id),
        ("bob", "edit", plan.plan_id),
        ("bob", "approve", plan.plan_id),
    ]
    assert all("requires the role 'finance'" in e.data["reason"] for e in refused)


def test_a_decision_on_a_plan_no_longer_waiting_is_an_audit_entry_too(
    settings: Settings, tmp_path: Path
) -> None:
    """bob, without the role, came after carol had released the plan: he was told only that
    it was decided, and the log kept no trace of his attempt (the docs say every refusal is
    one)."""
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_POLICY)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id, plan = held_seed(pipeline)
        pipeline.approve(plan.plan_id, "carol", roles=frozenset({"finance"}))
        with pytest.raises(Conflict, match="not waiting for review"):
            pipeline.approve(plan.plan_id, "bob")
        pipeline.wait_for(goal_id, timeout=5)

        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]

    assert [(e.actor, e.data["action"]) for e in refused] == [("bob", "approve")]
    assert "not waiting for review" in refused[0].data["reason"]


def test_an_edit_says_why_in_its_record_and_the_audit_log(pipeline: Pipeline) -> None:
    """An auditor found no place for why a plan was edited: the log held the two hashes, the
    reason "edited into revision 2". A reviewer's comment is kept with both; one over the
    limit is refused before anything changes."""
    goal_id, first = held_seed(pipeline)
    steps = steps_of(first)
    steps[2]["args"] = {"message": "edited: tickets over SLA"}

    with pytest.raises(InputInvalid, match="the limit is 2000"):
        pipeline.edit(first.plan_id, "bob", steps, comment="x" * 2001)
    pipeline.edit(first.plan_id, "bob", steps, comment="the message named the wrong team")

    eventually(lambda: len(plans_of(pipeline.store, goal_id)) == 2 or None, what="revision 2")
    [edited] = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "plan.edited"]
    assert edited.data["comment"] == "the message named the wrong team"
    with pipeline.store.session() as session:
        reason = session.execute(
            select(DecisionRow.reason).where(
                DecisionRow.plan_id == first.plan_id, DecisionRow.stage == "human"
            )
        ).scalar_one()
    assert reason == "edited into revision 2: the message named the wrong team"


def test_the_gate_s_signed_entry_names_the_approval_the_run_used_its_plan_and_its_approvers(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held and approved by alice, When it runs,
    Then the gate's `approval.signed` entry names the approval id the run's `goal.running`
    entry used, the plan hash and the approvers: an auditor asking who approved a payment
    reads what the gate checked and signed, not the approvals handed in before it (a forged
    one is recorded too, then refused). It named neither the approval nor the plan's hash."""
    goal_id, plan = held_seed(pipeline)
    pipeline.approve(plan.plan_id, "alice")
    assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

    entries = audit_entries(pipeline.store, goal_id)
    [signed] = [entry.data for entry in entries if entry.kind == "approval.signed"]
    [running] = [entry.data for entry in entries if entry.kind == "goal.running"]
    assert signed["approval_id"] == running["approval_id"]
    assert signed["plan_hash"] == plan_hash(plan)
    assert signed["approvers"] == ["alice"]


def test_a_goal_s_status_names_its_submitter_the_approvers_and_the_policy_version(
    pipeline: Pipeline,
) -> None:
    """An auditor asking `status --json` who submitted a payment and who approved it found
    neither (the approvers only as text after a reviewer's comment), nor the policy version."""
    from plangate.client import Client

    goal_id = pipeline.submit(SEED_GOAL, metadata={"submitted_by": "billing"}).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan = only_plan(pipeline.store, goal_id)
    pipeline.approve(plan.plan_id, "alice")
    pipeline.wait_for(goal_id, timeout=10)

    with Client(pipeline.settings) as client:
        shown = client.status(goal_id)
    assert shown.submitted_by == "billing"
    assert shown.approvers == ("alice",)
    assert shown.decision is not None
    assert str(shown.decision["policy_version"]).startswith("sha256:")
    assert str(shown.decision["decided_at"]).endswith("Z")  # as updated_at prints
    # Named under another key the policy's submitter bar reads too: shown alike.
    other = pipeline.submit(SEED_GOAL, metadata={"user": "dan"}).goal_id
    several = pipeline.submit(SEED_GOAL, metadata={"submitted_by": "billing", "user": "alice"})
    with Client(pipeline.settings) as client:
        assert client.status(other).submitted_by == "dan"
        # Each one the bar reads: showing "billing" alone hid that alice may not approve it.
        assert client.status(several.goal_id).submitted_by == "billing, alice"


def test_a_goal_s_status_names_who_edited_its_plan_why_and_the_rule_that_held_it(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan, held by hold-writes, which bob edits saying why, and alice approves,
    When `plangate status ID --json` and `status ID` run,
    Then they name the revision's author (`edit:bob`), his comment, the rule that held it, and
    that its summary is the planner's (his edit kept it): they said "approved by alice" only,
    as if the planner's plan had run. A goal nobody edited names its planner and no comment.
    """
    goal_id, first = held_seed(pipeline)
    steps = steps_of(first)
    steps[2]["args"] = {"message": "edited: tickets over SLA"}
    pipeline.edit(first.plan_id, "bob", steps, comment="the message named the wrong team")
    second = eventually(
        lambda: next((p for p in plans_of(pipeline.store, goal_id) if p.revision == 2), None),
        what="revision 2",
    )
    pipeline.wait_for(goal_id, HELD, timeout=5)
    pipeline.approve(second.plan_id, "alice")
    assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
    untouched = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(untouched, HELD, timeout=5)

    data_dir = pipeline.settings.data_dir
    as_json = json.loads(plangate_in(data_dir, "status", goal_id, "--json").stdout)
    as_text = plangate_in(data_dir, "status", goal_id).stdout
    planned = json.loads(plangate_in(data_dir, "status", untouched, "--json").stdout)

    said = {key: as_json[key] for key in ("planner", "edit_comment", "held_by")}
    assert said == {
        "planner": "edit:bob",
        "edit_comment": "the message named the wrong team",
        "held_by": "hold-writes",
    }
    assert as_json["approvers"] == ["alice"]
    assert "  by edit:bob: the message named the wrong team\n" in as_text
    assert "  held by rule hold-writes\n" in as_text
    assert planned["planner"] == plans_of(pipeline.store, untouched)[0].planner
    assert not planned["planner"].startswith("edit:")
    assert (planned["edit_comment"], planned["held_by"]) == (None, "hold-writes")
    # Bob's edit kept the planner's summary: said as the planner's, in JSON and in text.
    assert (as_json["summary_from_revision"], planned["summary_from_revision"]) == (1, None)
    assert "(summary from revision 1, not changed by the edit)\n" in as_text


def test_review_list_shows_the_oldest_held_plans_up_to_its_limit_and_says_more_wait(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """With 2,451 plans held, `review list` took 7.7 s and printed every one (the API and the
    page too: a page 207,000 pixels tall). It shows the oldest up to --limit, and says more
    wait."""
    goals = []
    for _ in range(3):  # one after another: the oldest held is the first submitted
        goals.append(pipeline.submit(SEED_GOAL).goal_id)
        pipeline.wait_for(goals[-1], HELD, timeout=10)
    oldest = [only_plan(pipeline.store, goal_id).plan_id for goal_id in goals[:2]]

    result = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "list", "--json", "--limit", "2"],
        capture_output=True,
        text=True,
        env=cli_env(pipeline, tmp_path),
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert [view["plan_id"] for view in json.loads(result.stdout)] == oldest
    assert "more plans are held than these 2, the oldest: --limit for more" in " ".join(
        result.stderr.split()
    )
    assert len(pipeline.review.held(limit=2)) == 2


def test_a_diff_shows_text_as_written_not_escaped() -> None:
    """Given an edit of a message to one with a dash and an emoji,
    Then the diff shows them as written: it showed `\\u2014` and `\\ud83d\\udea8`, which the
    steps table beside it did not."""
    steps = [{"id": "tell", "tool": "notify_oncall", "args": {"message": "page"}}]
    edited = [{**steps[0], "args": {"message": "page — the secondary 🚨"}}]
    before = PlanRow(plan_id="p1", revision=1, body={"summary": "s", "steps": steps})
    after = PlanRow(plan_id="p2", revision=2, body={"summary": "s", "steps": edited})

    assert '+        "message": "page — the secondary 🚨"' in plan_diff(before, after)


def test_approving_by_a_short_id_names_the_whole_plan_and_no_other_revision(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given the seed plan held,
    When alice approves it by the 8 characters `plangate run` prints,
    Then the text answer names the whole plan id and says the goal is approved, and does not
    say "its revision 1 is plan ..." as if another revision had replaced the one she typed
    (the short id was compared with the whole one); the JSON answer names the whole id.
    """
    goal_id, plan = held_seed(pipeline)
    env = cli_env(pipeline, tmp_path, **reviewer_env(tmp_path, "alice", ["finance"]))

    said = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "approve", plan.plan_id[:8]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert said.returncode == 0, said.stderr
    first, now = said.stdout.splitlines()
    assert first.startswith(f"plan {plan.plan_id}: approval by alice recorded")
    assert now == f"goal {goal_id} is approved"
