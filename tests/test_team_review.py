"""Review as a team runs it: each stage, `serve` and every operator's command a process of its
own, each with its own data folder, sharing only what a deployment shares (the broker, the
store, the gate's public keys, the reviewers file made with `plangate reviewers add`, the
session secret), on a real redis-server and a real SQLite file.

Tested in one process, the parts shared one policy, one key and one reviewers list: a part
reading what it should only have been told could not show. Here the gate alone has the policy
that holds plans; `serve` is given a lenient one of its own by mistake, which must not count.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from plangate.signing_keys import load_trusted_keys
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import fresh_database
from tests.support import call, eventually

# Each deployment starts five processes: slow on a busy machine, so the timeout is doubled.
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]

GATE_POLICY = """\
# The gate's policy: only the gate process reads this file.
rules:
  - name: approve-read-only
    match: 'plan.steps.all(s, s.effect == "read")'
    action: approve
    reason: every step only reads
  - name: two-from-finance
    match: 'goal.text.contains("four eyes")'
    action: hold
    reason: two people from finance decide this page
    requires_role: finance
    approvals: 2
  - name: finance-by-the-deadline
    match: 'goal.text.contains("by the deadline")'
    action: hold
    reason: finance decides this page quickly or never
    requires_role: finance
    hold_ttl_seconds: 1
  - name: pages-need-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: paging costs money; finance decides
    requires_role: finance
"""

# A policy file left in serve's settings: `serve` decides nothing, so it must change nothing.
SERVE_POLICY = """\
rules:
  - name: anyone-decides
    match: 'true'
    action: hold
    reason: anyone may decide
"""

READ_ONLY_GOAL = "How many tickets are open right now?"
SESSION_SECRET = "s" * 48
REVIEWERS = {"alice": ["finance"], "bob": ["finance"], "carol": ["finance"], "dave": []}


@dataclass
class Team:
    """The running deployment, and what the test knows of it as its people do."""

    fleet: Fleet
    serve_url: str
    tokens: dict[str, str]
    gate_policy: Path

    def cli(self, *args: str, folder: str = "operator-data") -> Any:
        """Run a plangate command in `folder` (a person's own); return its JSON output."""
        done = self.fleet.plangate(*args, PLANGATE_DATA_DIR=str(self.fleet.folder / folder))
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout) if "--json" in args else done.stdout.splitlines()

    def api(self, path: str, who: str = "alice", payload: object = None) -> tuple[int, Any]:
        """Call serve's API as the reviewer `who`."""
        return call(f"{self.serve_url}{path}", self.tokens[who], payload, timeout=20)

    def submit(self, text: str) -> str:
        """Submit a goal from the operator's folder; return its id."""
        return str(self.cli("submit", text, "--json")["goal_id"])

    def goal(self, goal_id: str) -> dict[str, Any]:
        """Return the goal as serve's goals API shows it."""
        code, body = self.api(f"/api/v1/goals/{goal_id}")
        assert code == 200, body
        return dict(body)

    def wait(self, goal_id: str, *states: str, plan_id: str | None = None) -> dict[str, Any]:
        """Wait until the goal is in one of `states` (with a plan other than `plan_id`)."""

        def there() -> dict[str, Any] | None:
            goal = self.goal(goal_id)
            moved = goal["status"] in states and goal["plan_id"] != plan_id
            return goal if moved else None

        return eventually(there, timeout=30, what=f"goal {goal_id} {'/'.join(states)}")

    def review(self, plan_id: str, who: str = "alice") -> dict[str, Any]:
        """Return a plan's review view as `who`'s client reads it."""
        code, body = self.api(f"/api/v1/reviews/{plan_id}", who)
        assert code == 200, body
        return dict(body)

    def audit(self) -> list[dict[str, Any]]:
        """Return the audit log, exported by an auditor in a folder of their own."""
        return [json.loads(line) for line in self.cli("audit", "export", folder="auditor")]

    def pages(self, goal_id: str) -> list[dict[str, Any]]:
        """Return the on-call pages the executor sent for a goal."""
        path = self.fleet.folder / "notifications.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [page for page in map(json.loads, lines) if page["goal_id"] == goal_id]


def add_reviewer(fleet: Fleet, path: Path, name: str, roles: list[str]) -> str:
    """Make a reviewer as docs/ say (`plangate reviewers add`); return the token it printed."""
    options = [option for role in roles for option in ("--role", role)]
    done = fleet.plangate("reviewers", "add", name, *options, "--file", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Team]:
    """A planner, a gate (with the policy) and an executor, and `serve`, each a process, on
    a SQLite file."""
    folder = tmp_path_factory.mktemp("team")
    database = f"sqlite:///{folder / 'plangate.db'}"
    yield from deployed(Fleet(redis_url, database, folder, dict(FAST_SWEEPS)))


@pytest.fixture(scope="module")
def postgres_team(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, postgres_url: str
) -> Iterator[Team]:
    """The same processes on a PostgreSQL database."""
    folder = tmp_path_factory.mktemp("postgres-team")
    with fresh_database(postgres_url) as database:
        yield from deployed(Fleet(redis_url, database, folder, dict(FAST_SWEEPS)))


def deployed(fleet: Fleet) -> Iterator[Team]:
    """Migrate the fleet's store, make the reviewers, start every process; stop them after."""
    folder = fleet.folder
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    (folder / "secrets").mkdir()
    reviewers = folder / "secrets" / "reviewers.yaml"
    (first, roles), *others = REVIEWERS.items()
    tokens = {first: add_reviewer(fleet, reviewers, first, roles)}
    gate_policy = folder / "gate-policy.yaml"
    gate_policy.write_text(GATE_POLICY)
    (folder / "serve-policy.yaml").write_text(SERVE_POLICY)
    shared = {"PLANGATE_REVIEWERS_FILE": str(reviewers)}
    fleet.start("planner")
    fleet.start("gate", PLANGATE_POLICY_FILE=str(gate_policy), **shared)
    fleet.start("executor")
    url = fleet.serve_free(
        PLANGATE_SESSION_SECRET=SESSION_SECRET,
        PLANGATE_POLICY_FILE=str(folder / "serve-policy.yaml"),
        **shared,
    )
    try:
        # Added while the others start: the gate and serve read the file again as it changes.
        tokens |= {name: add_reviewer(fleet, reviewers, name, roles) for name, roles in others}
        fleet.ready(url)
        yield Team(fleet, url, tokens, gate_policy)
    finally:
        fleet.stop_all()


def at(text: str) -> datetime:
    """Read a time as the API and the audit log write it."""
    return datetime.fromisoformat(text)


def held(team: Team, text: str) -> tuple[str, dict[str, Any]]:
    """Submit `text` and wait until the gate holds it; return its id and its plan's view."""
    goal_id = team.submit(text)
    goal = team.wait(goal_id, "held")
    return goal_id, team.review(goal["plan_id"])


def test_a_reviewers_client_sees_each_decision_of_a_plan_the_gate_process_held(
    team: Team,
) -> None:
    """Given the gate process holding pages for finance (two approvers where the goal says
    "four eyes"), serve and the executor in processes of their own,
    When alice approves one held page through serve, and, of a four-eyes page, alice edits
    revision 1 and bob and carol approve revision 2,
    Then the API shows each revision held since the gate's `goal.held`, undecided, then: the
    first approved by alice; revision 1 decided by alice's edit and replaced by revision 2;
    revision 2 "1 of 2 approvals (bob)", then approved by bob and carol; and the executor
    pages once for each goal, with the edited message.
    """
    one, first = held(team, SEED_GOAL)
    assert first["policy"]["rule"] == "pages-need-finance", first
    assert (first["required_role"], first["approvals_required"]) == ("finance", 1)
    assert (first["decision"], first["replaced_by"], first["approvers"]) == (None, None, [])

    code, said = team.api(
        f"/api/v1/reviews/{first['plan_id']}/approve", "alice", {"plan_hash": first["plan_hash"]}
    )
    assert code == 200, said
    assert team.wait(one, "completed", "failed")["status"] == "completed", team.fleet.logs()
    approved = team.review(first["plan_id"])
    assert approved["held_since"] == first["held_since"]
    assert approved["decision"]["action"] == "approve"
    assert approved["decision"]["decided_by"] == "alice"
    assert (approved["approvers"], approved["replaced_by"]) == (["alice"], None)
    assert len(team.pages(one)) == 1

    two, revision_1 = held(team, f"{SEED_GOAL} (four eyes)")
    steps = [
        dict(step, args={"message": "Open tickets: ${count}"}) if step["id"] == "notify" else step
        for step in revision_1["steps"]
    ]
    edit = {"plan_hash": revision_1["plan_hash"], "steps": steps, "comment": "say the count"}
    code, said = team.api(f"/api/v1/reviews/{revision_1['plan_id']}/edit", "alice", edit)
    assert code == 200, said
    revision_2 = team.review(team.wait(two, "held", plan_id=revision_1["plan_id"])["plan_id"])
    replaced = team.review(revision_1["plan_id"])
    assert replaced["decision"]["action"] == "edit"
    assert replaced["decision"]["decided_by"] == "alice"
    assert replaced["decision"]["comment"] == "say the count"
    assert replaced["replaced_by"] == {"plan_id": revision_2["plan_id"], "revision": 2}
    assert at(revision_2["held_since"]) > at(replaced["held_since"])
    assert (revision_2["decision"], revision_2["replaced_by"]) == (None, None)
    assert revision_2["approvals_required"] == 2

    approve = {"plan_hash": revision_2["plan_hash"]}
    assert team.api(f"/api/v1/reviews/{revision_2['plan_id']}/approve", "bob", approve)[0] == 200
    halfway = team.review(revision_2["plan_id"])
    assert team.goal(two)["status"] == "held"
    assert team.api(f"/api/v1/reviews/{revision_2['plan_id']}/approve", "carol", approve)[0] == 200
    assert team.wait(two, "completed", "failed")["status"] == "completed", team.fleet.logs()
    released = team.review(revision_2["plan_id"])

    assert (halfway["approvers"], halfway["decision"]) == (["bob"], None)
    assert halfway["approval_progress"] == "1 of 2 approvals (bob)"
    assert released["decision"]["action"] == "approve"
    assert released["decision"]["decided_by"] == "carol"  # the approval that released it
    assert released["approvers"] == ["bob", "carol"]
    assert released["replaced_by"] is None
    assert (first["cannot_be_released"], revision_2["cannot_be_released"]) == (None, None)
    goal = team.goal(two)
    assert (goal["approvers"], goal["approvers_signed"]) == (["bob", "carol"], True), goal
    assert [page["message"] for page in team.pages(two)] == ["Open tickets: 128"]
    log = team.audit()
    for goal_id, view in ((one, first), (two, replaced), (two, revision_2)):
        assert held_then(log, goal_id, at(view["held_since"])), (view["held_since"], log)
    assert [e["goal_id"] for e in log if e["kind"] == "goal.running"].count(two) == 1


def held_then(log: list[dict[str, Any]], goal_id: str, moment: datetime) -> bool:
    """Return whether the gate held the goal at `moment`, by its `goal.held` entries.

    The gate's hold row and its entry are written in one transaction, each with its own clock
    reading: the hold's time lies between the goal's previous entry and that one.
    """
    entries = [(e["kind"], at(e["at"])) for e in log if e["goal_id"] == goal_id]
    return any(
        before < moment <= entered
        for (_, before), (kind, entered) in itertools.pairwise(entries)
        if kind == "goal.held"
    )


def test_a_reviewer_without_the_gates_role_is_refused_through_serve_and_nothing_runs(
    team: Team,
) -> None:
    """Given pages held by the gate process's policy for `finance` (serve's own policy file
    asks no role), and dave, a reviewer with no role,
    When dave approves and cancels a held page, and retries one whose hold expired, through
    serve,
    Then each is refused (403) for the role the gate's rule asks, each refusal is a
    `review.refused` entry by dave naming the action, neither goal runs or moves, and
    `plangate audit verify`, run by an auditor in a folder of their own, finds the log intact.
    """
    kept, view = held(team, SEED_GOAL)
    lapsed = team.submit(f"{SEED_GOAL} by the deadline")
    team.wait(lapsed, "expired")

    approve = team.api(
        f"/api/v1/reviews/{view['plan_id']}/approve", "dave", {"plan_hash": view["plan_hash"]}
    )
    cancel = team.api(f"/api/v1/goals/{kept}/cancel", "dave", {"reason": "not needed"})
    retry = team.api(f"/api/v1/goals/{lapsed}/retry", "dave", {"reason": "try again"})

    assert [approve[0], cancel[0], retry[0]] == [403, 403, 403], (approve, cancel, retry)
    rules = ["pages-need-finance", "pages-need-finance", "finance-by-the-deadline"]
    for (_, said), rule in zip((approve, cancel, retry), rules, strict=True):
        assert f"rule '{rule}' requires the role 'finance'" in said["error"], said
    log = team.audit()
    refused = [
        (e["goal_id"], e["actor"], e["data"]["action"])
        for e in log
        if e["kind"] == "review.refused"
    ]
    assert (kept, "dave", "approve") in refused
    assert (kept, "dave", "cancel") in refused
    assert (lapsed, "dave", "retry") in refused
    assert (team.goal(kept)["status"], team.goal(lapsed)["status"]) == ("held", "expired")
    assert team.pages(kept) == team.pages(lapsed) == []
    ran = [e for e in log if e["kind"] == "goal.running" and e["goal_id"] in (kept, lapsed)]
    assert ran == []
    verified = team.cli("audit", "verify", "--json", folder="auditor")
    assert verified["verdict"] == "intact", verified


@pytest.mark.parametrize(
    "deployment", ["team", pytest.param("postgres_team", marks=pytest.mark.postgres)]
)
def test_the_policy_text_a_gate_process_decided_under_is_shown_byte_for_byte_elsewhere(
    deployment: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Given the gate process deciding a read-only goal under its policy file,
    When an operator, in a folder of their own with no policy file, runs `plangate policy show`
    with the first 8 digits of the version the decision records,
    Then it prints the gate's file exactly, and `-o FILE` writes its bytes; the log's
    `policy.adopted` entry names the gate's file; and the goal's `goal.approved` entry names
    the approval and the gate's key that the executor's `goal.running` names and trusts.
    (On a SQLite file, and on PostgreSQL.)
    """
    team: Team = request.getfixturevalue(deployment)
    goal_id = team.submit(READ_ONLY_GOAL)
    team.wait(goal_id, "completed")
    version = team.goal(goal_id)["decision"]["policy_version"]

    shown = team.fleet.plangate("policy", "show", version.removeprefix("sha256:")[:8])
    written = tmp_path / "policy-then.yaml"
    saved = team.fleet.plangate("policy", "show", version[:15], "-o", str(written))

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == team.gate_policy.read_text()
    assert saved.returncode == 0, saved.stderr
    assert written.read_bytes() == team.gate_policy.read_bytes()
    log = team.audit()
    adopted = [e for e in log if e["kind"] == "policy.adopted"]
    assert [e["data"]["version"] for e in adopted] == [version]
    assert adopted[0]["data"]["source"] == str(team.gate_policy)
    entries = [e for e in log if e["goal_id"] == goal_id]
    [approved] = [e["data"] for e in entries if e["kind"] == "goal.approved"]
    [running] = [e["data"] for e in entries if e["kind"] == "goal.running"]
    assert approved["approval_id"] == running["approval_id"]
    trusted = set(load_trusted_keys(team.fleet.settings()))  # what the executor reads
    assert approved["key_id"] in trusted, (approved, trusted)


def test_goals_list_status_and_the_goals_api_say_how_a_goal_run_across_processes_ended(
    team: Team,
) -> None:
    """Given a read-only goal the gate process approved by its rule, and a page alice approved
    through serve, both run by the executor process,
    When an operator runs `plangate goals list` and `plangate status`, and a reviewer reads
    serve's goals API,
    Then each says both completed, decided by the rule and by alice, and `status` and the API
    give each step's result.
    """
    by_rule = team.submit(READ_ONLY_GOAL)
    by_alice, view = held(team, SEED_GOAL)
    approve = {"plan_hash": view["plan_hash"]}
    assert team.api(f"/api/v1/reviews/{view['plan_id']}/approve", "alice", approve)[0] == 200
    for goal_id in (by_rule, by_alice):
        team.wait(goal_id, "completed", "failed")

    listed = team.fleet.plangate("goals", "list", "--state", "completed", "--json")
    rows = {row["goal_id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    code, page = team.api("/api/v1/goals?state=completed", "bob")

    assert code == 200, page
    api_rows = {row["goal_id"]: row for row in page["goals"]}
    decided = ((by_rule, "approve-read-only", None), (by_alice, "alice", "pages-need-finance"))
    for goal_id, decider, held_by in decided:
        status = team.cli("status", goal_id, "--json")
        api = team.goal(goal_id)
        for shown in (rows[goal_id], api_rows[goal_id], status, api):
            assert shown["status"] == "completed", shown
        assert rows[goal_id]["decided_by"] == api_rows[goal_id]["decided_by"] == decider
        assert status["decision"] == api["decision"]
        person = "policy" if goal_id == by_rule else decider  # and the rule, by name
        assert (status["decision"]["decided_by"], status["held_by"]) == (person, held_by)
        assert status["results"] == api["results"]
        outputs = {result["step_id"]: result["output"] for result in status["results"]}
        assert (outputs["count"], outputs["sla"]) == (128, 100), status
