"""`plangate review` as a reviewer with a token: through a live `serve` (`--server`), or on the
store with the token checked against the reviewers file; and the one-line refusals.

The server runs in this process beside an embedded pipeline (the in-memory broker is shared
within the process), so a decision made through it runs the plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import InputInvalid
from plangate.reviewers import add_reviewer
from plangate.server import create_app
from plangate.store import DecisionRow
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.support import HELD, audit_entries, only_plan, plans_of, running_pipeline, write_yaml

REPO = str(Path(__file__).resolve().parents[1])
FINANCE_HOLDS_PAGES = {
    "mode": "enforce",
    "rules": [
        {
            "name": "hold-pages-for-finance",
            "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
            "action": "hold",
            "reason": "paging costs money; finance decides",
            "requires_role": "finance",
        }
    ],
}


class Team:
    """A reviewers file with alice (finance) and bob (no roles), and their tokens."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "reviewers.yaml"
        self.alice = add_reviewer(self.file, "alice", ["finance"])
        self.bob = add_reviewer(self.file, "bob", [])


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team(tmp_path)


@pytest.fixture
def finance_pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    policy = write_yaml(tmp_path / "policy.yaml", FINANCE_HOLDS_PAGES)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        yield pipeline


@pytest.fixture
def server(finance_pipeline: Pipeline, team: Team) -> Iterator[str]:
    settings = finance_pipeline.settings.model_copy(
        update={
            "broker_url": "memory://",
            "reviewers_file": team.file,
            "session_secret": SecretStr("s" * 40),
        }
    )
    with serving_app(create_app(settings)) as url:
        yield url


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `plangate ARGS` with no PLANGATE_* settings of the outer environment but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        capture_output=True,
        text=True,
        env=clean | {"PYTHONPATH": REPO, "XDG_DATA_HOME": str(tmp_path / "xdg"), **env},
        timeout=60,
        check=False,
    )


def held(pipeline: Pipeline) -> tuple[str, str]:
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    return goal_id, only_plan(pipeline.store, goal_id).plan_id


def steps_shown(tmp_path: Path, plan_id: str, server: str, token: str) -> list[dict[str, Any]]:
    """The plan's steps as `review show --json --server` shows them, ready to edit."""
    shown = cli(
        tmp_path, "review", "show", plan_id, "--json", "--server", server,
        PLANGATE_REVIEWER_TOKEN=token,
    )  # fmt: skip
    return [
        {k: v for k, v in step.items() if k != "effect" and v not in (None, [], {})}
        for step in json.loads(shown.stdout)["steps"]
    ]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_approve_through_a_live_server_with_a_token_runs_the_plan(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given a plan held for finance and `plangate serve` at URL,
    When alice runs `plangate review approve PLAN --server URL` with her token in
    PLANGATE_REVIEWER_TOKEN (no hash: the one the server shows now),
    Then the answer says her approval is recorded and the gate releases the plan, and it runs.
    """
    goal_id, plan_id = held(finance_pipeline)

    result = cli(
        tmp_path, "review", "approve", plan_id, "--server", server,
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == (
        f"plan {plan_id}: approval by alice recorded; the gate signs it and releases the plan"
    )
    assert second.startswith(f"goal {goal_id} is ")
    assert finance_pipeline.wait_for(goal_id).status == "completed"


def test_list_show_and_reject_through_the_server_from_its_variable(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    goal_id, plan_id = held(finance_pipeline)
    token_file = tmp_path / "token"
    token_file.write_text(team.alice + "\n")
    env = {"PLANGATE_SERVER_URL": server}

    listed = cli(tmp_path, "review", "list", "--json", "--token-file", str(token_file), **env)
    shown = cli(tmp_path, "review", "show", plan_id, "--token-file", str(token_file), **env)
    rejected = cli(
        tmp_path, "review", "reject", plan_id, "--comment", "not today", "--json",
        "--token-file", str(token_file), **env,
    )  # fmt: skip

    assert [item["plan_id"] for item in json.loads(listed.stdout)] == [plan_id], listed.stderr
    assert "notify_oncall" in shown.stdout, shown.stderr
    assert "Requires the role: finance" in shown.stdout
    assert rejected.returncode == 0, rejected.stderr
    outcome = json.loads(rejected.stdout)
    assert (outcome["goal_id"], outcome["status"]) == (goal_id, "rejected")
    assert outcome["message"] == "rejection by alice recorded; the plan never runs"


def test_edit_through_the_server_makes_the_next_revision(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    goal_id, plan_id = held(finance_pipeline)
    steps = steps_shown(tmp_path, plan_id, server, team.alice)
    steps[2]["args"]["message"] = "edited over HTTP"
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"summary": "paged with care", "steps": steps}))

    result = cli(
        tmp_path, "review", "edit", plan_id, "--file", str(edit), "--json", "--server", server,
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["revision"] == 2
    assert outcome["newest_plan_id"] != plan_id
    revisions = plans_of(finance_pipeline.store, goal_id)
    assert revisions[1].planner == "edit:alice"
    assert revisions[1].body["steps"][2]["args"] == {"message": "edited over HTTP"}


def test_review_json_is_the_same_read_from_the_store_or_from_the_server(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given a plan held for finance,
    When `review list --json` and `review show --json` run once against the store and once
    with --server,
    Then they print the same JSON (a script written against one works against the other), and
    the steps `show --json` printed go back as an edit as they are, effects and all.
    """
    goal_id, plan_id = held(finance_pipeline)
    here = {
        "PLANGATE_DATA_DIR": str(finance_pipeline.settings.data_dir),
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_REVIEWER_TOKEN": team.alice,
        "PLANGATE_REVIEWERS_FILE": str(team.file),
    }
    there = {"PLANGATE_SERVER_URL": server, "PLANGATE_REVIEWER_TOKEN": team.alice}

    listed = [cli(tmp_path, "review", "list", "--json", **env) for env in (here, there)]
    shown = [cli(tmp_path, "review", "show", plan_id, "--json", **env) for env in (here, there)]

    assert all(result.returncode == 0 for result in listed + shown), [r.stderr for r in shown]
    assert json.loads(listed[0].stdout) == json.loads(listed[1].stdout)
    assert json.loads(shown[0].stdout) == json.loads(shown[1].stdout)
    detail = json.loads(shown[0].stdout)
    assert detail["steps"][2]["effect"] == "write"
    detail["steps"][2]["args"]["message"] = "edited as shown"
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"summary": detail["summary"], "steps": detail["steps"]}))
    edited = cli(tmp_path, "review", "edit", plan_id, "--file", str(edit), "--json", **here)
    assert edited.returncode == 0, edited.stderr
    assert plans_of(finance_pipeline.store, goal_id)[1].body["steps"][2]["args"] == {
        "message": "edited as shown"
    }


def test_the_servers_refusals_are_one_line_each_with_the_stores_exit_codes(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given a plan held for finance,
    When a wrong token, bob (no finance role), a stale hash and an unknown plan are sent,
    Then each is one line: 401 exits 2 (fix your token); 403, 409 and 404 exit 1.
    """
    goal_id, plan_id = held(finance_pipeline)
    approve = ("review", "approve", plan_id, "--server", server)

    wrong = cli(tmp_path, *approve, PLANGATE_REVIEWER_TOKEN="not-a-reviewer-token-at-all")
    no_role = cli(tmp_path, *approve, PLANGATE_REVIEWER_TOKEN=team.bob)
    stale = cli(tmp_path, *approve, "--hash", "0" * 64, PLANGATE_REVIEWER_TOKEN=team.alice)
    unknown = cli(
        tmp_path, "review", "approve", "no-such-plan", "--server", server,
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert wrong.returncode == 2
    assert one_line(wrong).startswith("error: the server refused the reviewer token")
    assert no_role.returncode == 2
    assert "finance" in one_line(no_role)
    assert stale.returncode == 2
    assert "the hash given does not match plan" in one_line(stale)
    assert unknown.returncode == 2
    assert "no plan 'no-such-plan'" in one_line(unknown)
    assert finance_pipeline.wait_for(goal_id, HELD).status == "held"


def test_an_unreachable_server_is_one_line(tmp_path: Path, team: Team) -> None:
    result = cli(
        tmp_path, "review", "approve", "p1", "--server", "http://127.0.0.1:9",
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 2
    assert one_line(result).startswith("error: cannot reach plangate serve at http://127.0.0.1:9")


def test_without_a_token_deciding_says_where_a_token_comes_from(tmp_path: Path) -> None:
    result = cli(tmp_path, "review", "approve", "p1", "--server", "http://127.0.0.1:9")

    assert result.returncode == 2
    assert one_line(result) == (
        "error: no reviewer token: set PLANGATE_REVIEWER_TOKEN or pass --token-file PATH (a "
        "token is printed once by `plangate reviewers add NAME`; ask whoever runs plangate "
        "for yours)"
    )


@pytest.mark.parametrize("command", ["approve", "reject", "edit", "settle"])
def test_without_a_deployment_deciding_fails_at_once_naming_what_to_set(
    tmp_path: Path, team: Team, command: str
) -> None:
    extra = {"reject": ["--comment", "no"], "settle": ["step", "--happened"]}.get(command, [])

    result = cli(tmp_path, "review", command, "p1", *extra, PLANGATE_REVIEWER_TOKEN=team.alice)

    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("error: deciding needs a running deployment")
    for named in ("--server URL", "PLANGATE_SERVER_URL", "PLANGATE_BROKER_URL", "plangate run"):
        assert named in line


@pytest.mark.parametrize("option", ["--reviewer", "--role"])
def test_self_asserted_reviewer_and_role_are_gone(tmp_path: Path, option: str) -> None:
    result = cli(tmp_path, "review", "approve", "p1", option, "alice")
    helped = cli(tmp_path, "review", "approve", "--help")

    assert result.returncode == 2
    assert f"No such option: {option}" in result.stderr
    assert option not in helped.stdout
    assert "--token-file" in helped.stdout
    assert "--token " not in helped.stdout


def test_on_the_store_the_token_is_checked_against_the_reviewers_file(
    finance_pipeline: Pipeline, team: Team, tmp_path: Path
) -> None:
    """Given a plan held for finance, and the CLI on the pipeline's store and a broker,
    When a token not in the file is used, then bob's (no finance role), then alice's,
    Then the first is refused in one line naming the file, bob is refused for the role, and
    alice's approval is recorded with her name and her roles from the file.
    """
    goal_id, plan_id = held(finance_pipeline)
    env = {
        "PLANGATE_DATA_DIR": str(finance_pipeline.settings.data_dir),
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_REVIEWERS_FILE": str(team.file),
    }
    digest = plans_of(finance_pipeline.store, goal_id)[0].plan_hash
    approve = ("review", "approve", plan_id, "--hash", digest, "--json")

    stranger = cli(tmp_path, *approve, PLANGATE_REVIEWER_TOKEN="x" * 43, **env)
    bob = cli(tmp_path, *approve, PLANGATE_REVIEWER_TOKEN=team.bob, **env)
    alice = cli(tmp_path, *approve, PLANGATE_REVIEWER_TOKEN=team.alice, **env)

    assert stranger.returncode == 2
    assert one_line(stranger) == (
        f"error: that reviewer token is not in the reviewers file {team.file}; check "
        "PLANGATE_REVIEWER_TOKEN or --token-file"
    )
    assert bob.returncode == 2
    assert "finance" in one_line(bob)
    assert alice.returncode == 0, alice.stderr
    assert json.loads(alice.stdout)["status"] == "approved"
    with finance_pipeline.store.session() as session:
        human = session.execute(
            select(DecisionRow).where(DecisionRow.plan_id == plan_id, DecisionRow.stage == "human")
        ).scalar_one()
        assert (human.decided_by, human.roles) == ("alice", ["finance"])


def test_on_the_store_without_a_reviewers_file_says_to_set_it(tmp_path: Path, team: Team) -> None:
    result = cli(
        tmp_path, "review", "approve", "p1",
        PLANGATE_BROKER_URL="memory://", PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 2
    assert "set PLANGATE_REVIEWERS_FILE, or pass --server URL" in one_line(result)


def test_an_invalid_edit_and_a_blank_reason_to_reject_are_exit_2_and_change_nothing(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given a plan held for finance,
    When alice submits an edit naming a tool the catalog lacks, or rejects with a comment of
    blanks, through the server,
    Then each is one line and exit 2 (something to fix, like every refused input; the edit was
    exit 1), and the plan still waits: a rejection is recorded only with its reason.
    """
    goal_id, plan_id = held(finance_pipeline)
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"summary": "s", "steps": [{"id": "x", "tool": "nope"}]}))
    as_alice = {"PLANGATE_REVIEWER_TOKEN": team.alice}

    invalid = cli(
        tmp_path, "review", "edit", plan_id, "--file", str(edit), "--server", server, **as_alice
    )
    blank = cli(
        tmp_path, "review", "reject", plan_id, "--comment", "   ", "--server", server, **as_alice
    )

    assert invalid.returncode == 2, invalid.stderr
    assert "tool 'nope' is not in the catalog" in one_line(invalid)
    assert blank.returncode == 2, blank.stderr
    assert "comment" in one_line(blank)
    assert finance_pipeline.wait_for(goal_id, HELD).status == "held"
    assert len(plans_of(finance_pipeline.store, goal_id)) == 1


def test_a_blank_reason_to_reject_is_refused_on_the_store_too(
    finance_pipeline: Pipeline, team: Team, tmp_path: Path
) -> None:
    """The review desk itself refuses it, whichever way the rejection comes."""
    goal_id, plan_id = held(finance_pipeline)
    with pytest.raises(InputInvalid, match="comment is required"):
        finance_pipeline.review.reject(plan_id, "alice", " \n ", roles=frozenset({"finance"}))
    assert finance_pipeline.wait_for(goal_id, HELD).status == "held"


def test_edit_with_no_editor_and_no_terminal_says_to_pass_a_file_at_once(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given no EDITOR or VISUAL and no terminal (a script, a pipe),
    When `plangate review edit PLAN` runs without --file,
    Then it exits 2 at once saying to pass --file (it started vi on the pipe, which waited for
    ever), and nothing is submitted.
    """
    goal_id, plan_id = held(finance_pipeline)
    env = {k: v for k, v in os.environ.items() if k not in ("EDITOR", "VISUAL")}
    result = subprocess.run(
        [sys.executable, "-m", "plangate", "review", "edit", plan_id, "--server", server],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in env.items() if not k.startswith("PLANGATE_")}
        | {"PYTHONPATH": REPO, "PLANGATE_REVIEWER_TOKEN": team.alice},
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--file PATH" in one_line(result)
    assert len(plans_of(finance_pipeline.store, goal_id)) == 1


def test_a_server_url_that_is_not_plangate_serve_s_root_says_so(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given a running serve,
    When `--server` names a path inside it (`/reviews`), Then the one line says the URL is not
    a plangate serve's root (it said "error: Not Found", as if the plan were unknown)."""
    result = cli(
        tmp_path, "review", "list", "--server", f"{server}/reviews",
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 2
    assert "answered 404 Not Found, not as plangate serve answers" in one_line(result)
    assert "give --server (PLANGATE_SERVER_URL) the root URL of a plangate serve" in one_line(
        result
    )


def test_show_through_the_server_flags_no_flow_the_server_calls_trusted(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """The seed plan's message is built from two trusted reads (the API's `untrusted_from` is
    empty): `review show --server` flagged both as untrusted data, having no catalog here to
    tell, where `review show` on the store flagged none. Reviewers learn to ignore a warning
    that cries wolf."""
    _, plan_id = held(finance_pipeline)
    token_file = tmp_path / "token"
    token_file.write_text(team.alice + "\n")

    shown = cli(
        tmp_path, "review", "show", plan_id, "--token-file", str(token_file), "--server", server
    )
    as_json = cli(
        tmp_path, "review", "show", plan_id, "--json", "--token-file", str(token_file),
        "--server", server,
    )  # fmt: skip

    assert shown.returncode == 0, shown.stderr
    assert "notify_oncall" in shown.stdout
    assert "⚠" not in shown.stdout  # the mark of a flow from an untrusted step
    assert all(step["untrusted_from"] == {} for step in json.loads(as_json.stdout)["steps"])


def test_edit_through_the_server_keeps_the_reviewers_comment(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    goal_id, plan_id = held(finance_pipeline)
    steps = steps_shown(tmp_path, plan_id, server, team.alice)
    steps[2]["args"]["message"] = "edited over HTTP"
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"steps": steps}))

    result = cli(
        tmp_path, "review", "edit", plan_id, "--file", str(edit), "--server", server,
        "--comment", "the page named the wrong team", PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    [edited] = [
        e for e in audit_entries(finance_pipeline.store, goal_id) if e.kind == "plan.edited"
    ]
    assert edited.data["comment"] == "the page named the wrong team"


def test_an_approval_without_a_comment_records_none_on_the_store_or_through_the_server(
    finance_pipeline: Pipeline, server: str, team: Team, tmp_path: Path
) -> None:
    """Given two plans held for finance,
    When alice approves one with `review approve ID --hash H` on the store and the other
    through `serve`, writing no comment,
    Then each approval's audit entry records no comment (""), `status` says "decision: approve
    by alice" with nothing after it, and the review's view says no comment: each read
    "approved", as if she had typed it. The log and the views still agree (`audit verify`).
    """
    goal_here, plan_here = held(finance_pipeline)
    goal_there, plan_there = held(finance_pipeline)
    here = {
        "PLANGATE_DATA_DIR": str(finance_pipeline.settings.data_dir),
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_REVIEWERS_FILE": str(team.file),
    }
    digest = plans_of(finance_pipeline.store, goal_here)[0].plan_hash

    on_store = cli(
        tmp_path, "review", "approve", plan_here, "--hash", digest,
        PLANGATE_REVIEWER_TOKEN=team.alice, **here,
    )  # fmt: skip
    on_server = cli(
        tmp_path, "review", "approve", plan_there, "--server", server,
        PLANGATE_REVIEWER_TOKEN=team.alice,
    )  # fmt: skip
    finance_pipeline.wait_for(goal_there, {"completed"})
    said = [cli(tmp_path, "status", goal, **here).stdout for goal in (goal_here, goal_there)]
    shown = cli(
        tmp_path, "review", "show", plan_there, "--json", PLANGATE_REVIEWER_TOKEN=team.alice, **here
    )
    verified = cli(tmp_path, "audit", "verify", **here)
    approvals = [
        entry
        for goal in (goal_here, goal_there)
        for entry in audit_entries(finance_pipeline.store, goal)
        if entry.kind == "goal.approved" and entry.actor == "alice"
    ]

    assert (on_store.returncode, on_server.returncode) == (0, 0), on_store.stderr + on_server.stderr
    assert [entry.data["comment"] for entry in approvals] == ["", ""]
    for status in said:
        decision = next(line for line in status.splitlines() if "decision:" in line)
        assert decision == "  decision: approve by alice"
    assert json.loads(shown.stdout)["decision"]["comment"] == ""
    assert verified.returncode == 0, verified.stdout + verified.stderr
