"""`plangate policy check` and `plangate policy test`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from tests.support import outer_environment

Run = Callable[..., subprocess.CompletedProcess[str]]
REPO = str(Path(__file__).resolve().parents[1])
EXIT_USAGE = 2
DEFAULT_POLICY = str(resources.files("approval_gate").joinpath("default_policy.yaml"))
BROKEN_POLICY = """\
mode: enforce
rules:
  - name: approve-read-only
    match: 'plan.steps.all(s, s.effect == "read")'
    action: approve
    reason: every step only reads

  - name: broken-rule
    match: 'plan.steps.exists(s, s.effect ==)'
    action: hold
    reason: never compiles
"""
FINANCE_POLICY = """\
rules:
  - name: hold-pages-for-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: paging costs money
    requires_role: finance
    hold_ttl_seconds: 3600
"""
SEED_STEPS = {
    "summary": "count, compare, page",
    "steps": [
        {"id": "count", "tool": "ticket_count"},
        {"id": "sla", "tool": "sla_threshold"},
        {
            "id": "notify",
            "tool": "notify_oncall",
            "args": {"message": "over SLA"},
            "when": "steps.count.output > steps.sla.output",
        },
    ],
}


@pytest.fixture
def plangate(tmp_path: Path) -> Run:
    outer = outer_environment() | {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PYTHONIOENCODING": "utf-8",
        "PYTHONPATH": REPO,  # this checkout, whatever else is installed
    }

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plangate", *args],
            capture_output=True,
            text=True,
            env=outer | (env or {}),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    return run


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_compiles_every_rule_of_a_good_policy(plangate: Run) -> None:
    """Given the packaged default policy,
    When `plangate policy check` reads it,
    Then it exits 0 saying its four rules compile.
    """
    result = plangate("policy", "check", DEFAULT_POLICY)

    assert result.returncode == 0, result.stderr
    assert "4 rules compile" in result.stdout


def test_check_names_the_rule_and_line_that_does_not_compile(plangate: Run, tmp_path: Path) -> None:
    """Given a policy whose second rule's CEL is broken (it starts on line 8),
    When `plangate policy check` reads it,
    Then it exits 2 and the error names `broken-rule` and line 8.
    """
    path = write(tmp_path / "broken.yaml", BROKEN_POLICY)

    result = plangate("policy", "check", path)

    assert result.returncode == EXIT_USAGE
    assert "rule 'broken-rule' (line 8)" in result.stderr
    assert "does not compile" in result.stderr


def test_check_json_lists_roles_and_ttls(plangate: Run, tmp_path: Path) -> None:
    """Given a policy with a rule requiring `finance` and its own hold TTL,
    When `plangate policy check --json` reads it,
    Then the rule is listed with its role and TTL.
    """
    path = write(tmp_path / "finance.yaml", FINANCE_POLICY)

    result = plangate("policy", "check", path, "--json")

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["ok"] is True
    assert body["rules"] == [
        {
            "name": "hold-pages-for-finance",
            "action": "hold",
            "line": 2,
            "requires_role": "finance",
            "hold_ttl_seconds": 3600,
            "work_bounded": False,
        }
    ]


def test_test_prints_the_decision_the_rule_and_the_reason(plangate: Run, tmp_path: Path) -> None:
    """Given the default policy and the seed plan's steps (it pages on-call),
    When `plangate policy test` decides it with the demo tools,
    Then it prints hold, by rule hold-writes, with the rule's reason.
    """
    plan = write(tmp_path / "plan.json", json.dumps(SEED_STEPS))

    result = plangate("policy", "test", DEFAULT_POLICY, plan, "--tools", "plangate.demo.tools")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "decision: hold",
        "rule: hold-writes",
        "reason: the plan writes; a person must approve it",
    ]


def test_test_json_approves_a_read_only_plan_and_denies_an_unknown_tool(
    plangate: Run, tmp_path: Path
) -> None:
    """Given the default policy, a plan that only reads and one with a tool nobody offers,
    When `plangate policy test --json` decides each,
    Then the first is approved by approve-read-only, the second denied as invalid.
    """
    reads = write(tmp_path / "reads.json", json.dumps({"steps": SEED_STEPS["steps"][:2]}))
    unknown = write(tmp_path / "unknown.json", json.dumps({"steps": [{"id": "x", "tool": "rm"}]}))
    tools = ("--tools", "plangate.demo.tools", "--json")

    approved = plangate("policy", "test", DEFAULT_POLICY, reads, *tools)
    denied = plangate("policy", "test", DEFAULT_POLICY, unknown, *tools)

    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["action"] == "approve"
    assert json.loads(approved.stdout)["rule"] == "approve-read-only"
    assert denied.returncode == 0, denied.stderr
    assert json.loads(denied.stdout)["action"] == "deny"
    assert "rm" in json.loads(denied.stdout)["reason"]


def test_test_without_a_catalog_says_to_pass_tools(plangate: Run, tmp_path: Path) -> None:
    """Given an empty store (no executor has published tools),
    When `plangate policy test` runs without --tools,
    Then it exits 2 and says to pass --tools.
    """
    plan = write(tmp_path / "plan.json", json.dumps(SEED_STEPS))

    result = plangate("policy", "test", DEFAULT_POLICY, plan)

    assert result.returncode == EXIT_USAGE
    assert "--tools" in result.stderr


TESTED_POLICY = """\
rules:
  - name: approve-read-only
    match: 'plan.steps.all(s, s.effect == "read")'
    action: approve
    reason: every step only reads
  - name: hold-writes
    match: 'plan.steps.exists(s, s.effect == "write")'
    action: hold
    reason: a person approves writes
tests:
  - name: counting tickets runs by itself
    plan: {steps: [{id: count, tool: ticket_count}]}
    expect: approve
  - name: paging waits for a person
    plan: {steps: [{id: page, tool: notify_oncall, args: {message: hi}}]}
    expect: %s
"""


def test_test_expect_exits_1_when_the_decision_differs(plangate: Run, tmp_path: Path) -> None:
    """Given the default policy and the seed plan (held: it pages),
    When `policy test --expect hold` and then `--expect approve` decide it,
    Then the first exits 0 and the second exits 1 saying what was expected and decided.
    """
    plan = write(tmp_path / "plan.json", json.dumps(SEED_STEPS))
    tools = ("--tools", "plangate.demo.tools")

    held = plangate("policy", "test", DEFAULT_POLICY, plan, *tools, "--expect", "hold")
    wrong = plangate("policy", "test", DEFAULT_POLICY, plan, *tools, "--expect", "approve")
    typo = plangate("policy", "test", DEFAULT_POLICY, plan, *tools, "--expect", "aprove")

    assert held.returncode == 0, held.stderr
    assert wrong.returncode == 1
    assert "expected approve, but the policy decides hold" in wrong.stderr
    assert typo.returncode == EXIT_USAGE
    assert "say approve, deny or hold" in typo.stderr


def test_the_tests_in_a_policy_file_pass_and_a_wrong_expectation_fails(
    plangate: Run, tmp_path: Path
) -> None:
    """Given a policy file carrying two tests: (a read approved, a page held),
    When `plangate policy test FILE` runs them, and again with the second expecting approve,
    Then the first run says 2 passed and exits 0; the second names the failing test, what it
    expected and what was decided, and exits 1.
    """
    good = write(tmp_path / "good.yaml", TESTED_POLICY % "hold")
    bad = write(tmp_path / "bad.yaml", TESTED_POLICY % "approve")
    tools = ("--tools", "plangate.demo.tools")

    passing = plangate("policy", "test", good, *tools)
    failing = plangate("policy", "test", bad, *tools)

    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "2 passed, 0 failed" in passing.stdout
    assert failing.returncode == 1
    assert (
        "FAIL  paging waits for a person: expected approve, got hold (rule hold-writes)"
        in failing.stdout
    )
    assert "1 passed, 1 failed" in failing.stdout


def test_check_refuses_a_field_no_plan_has(plangate: Run, tmp_path: Path) -> None:
    """`policy check` on a rule reading `plan.nosuchfield` exits 2 naming the rule, its line
    and the fields a plan has."""
    path = write(
        tmp_path / "typo.yaml",
        "rules:\n  - name: typo\n    match: 'plan.nosuchfield == 3'\n"
        "    action: approve\n    reason: never\n",
    )

    result = plangate("policy", "check", path)

    assert result.returncode == EXIT_USAGE
    assert "rule 'typo' (line 2)" in result.stderr
    assert "plan has no field nosuchfield" in result.stderr


CAPPED_PAGES = """\
rules:
  - name: approve-few-pages
    match: >-
      plan.steps.exists(s, s.tool == "notify_oncall")
      && history.count("notify_oncall", "%s") < 3
    action: approve
    reason: fewer than 3 pages this hour
tests:
  - name: the first page of the hour runs by itself
    plan: {steps: [{id: notify, tool: notify_oncall, args: {message: over SLA}}]}
    expect: approve
"""


def test_a_rule_over_history_is_tested_as_on_a_new_deployment(
    plangate: Run, tmp_path: Path
) -> None:
    """Given a rule approving a page while fewer than 3 were approved this hour,
    When `policy test` decides a page (a plan file, and the file's own tests:),
    Then it sees no earlier approval and approves, on any machine; a window the rule gets
    wrong is refused when the policy loads (it held every plan the rule met).
    """
    good = write(tmp_path / "capped.yaml", CAPPED_PAGES % "1h")
    wrong = write(tmp_path / "wrong.yaml", CAPPED_PAGES % "an hour")
    plan = write(tmp_path / "plan.json", json.dumps(SEED_STEPS))
    tools = ("--tools", "plangate.demo.tools")

    decided = plangate("policy", "test", good, plan, *tools, "--expect", "approve")
    tested = plangate("policy", "test", good, *tools)
    mistaken = plangate("policy", "test", wrong, plan, *tools)

    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert "rule: approve-few-pages" in decided.stdout
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed, 0 failed" in tested.stdout
    assert mistaken.returncode == 2, mistaken.stdout
    assert "history.count: 'an hour' is no window" in mistaken.stderr


def test_test_takes_the_steps_alone_as_its_help_says(plangate: Run, tmp_path: Path) -> None:
    """ "A plan (or its steps)": a bare list of steps was refused as no plan."""
    steps = write(tmp_path / "steps.json", json.dumps(SEED_STEPS["steps"][:2]))

    result = plangate(
        "policy", "test", DEFAULT_POLICY, steps, "--tools", "plangate.demo.tools", "--json"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rule"] == "approve-read-only"


@pytest.mark.parametrize(
    ("plan", "said"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"steps": [], "steps": [{"id": "x", "tool": "ticket_count"}]}', "repeats the key"),
        ('{"steps": [], "summary": NaN}', "NaN"),
    ],
    ids=["deep", "repeated-key", "nan"],
)
def test_test_reads_a_plan_file_as_strictly_as_a_message(
    plangate: Run, tmp_path: Path, plan: str, said: str
) -> None:
    """Given a plan file nested 100,000 deep, repeating a key, or holding NaN,
    Then `policy test` refuses it in one line with exit 2, as the gate refuses such a message;
    the deep one crashed with a RecursionError traceback, the others were read leniently.
    """
    path = write(tmp_path / "plan.json", plan)

    result = plangate("policy", "test", DEFAULT_POLICY, path, "--tools", "plangate.demo.tools")

    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_test_named_with_terminal_controls_is_shown_as_escapes(
    plangate: Run, tmp_path: Path
) -> None:
    """A `tests:` name holding a right-to-left override or a line break was printed raw: the
    line read otherwise, or forged an `ok` line of its own."""
    named = "reads \\u202eevorppa\\nok    forged: approve"
    policy = TESTED_POLICY.replace("counting tickets runs by itself", f'"{named}"') % "hold"
    tested = plangate(
        "policy", "test", write(tmp_path / "p.yaml", policy), "--tools", "plangate.demo.tools"
    )

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "\u202e" not in tested.stdout
    assert not any(line.startswith("ok    forged") for line in tested.stdout.splitlines())
    assert "reads \\u202eevorppa\\nok    forged: approve" in tested.stdout


def test_check_names_a_rule_whose_work_grows_faster_than_the_plan(
    plangate: Run, tmp_path: Path
) -> None:
    """A rule comparing each recipient with every other is evaluated only over plans small
    enough for it; the operator learns which rules those are before the gate meets one."""
    path = write(
        tmp_path / "twice.yaml",
        "rules:\n  - name: a-recipient-twice\n"
        "    match: 'plan.steps.exists(s, s.args.to.exists(r, r in s.args.cc))'\n"
        "    action: deny\n    reason: twice\n",
    )

    text = plangate("policy", "check", path)
    body = json.loads(plangate("policy", "check", path, "--json").stdout)

    assert text.returncode == 0, text.stderr
    assert "note: rule 'a-recipient-twice' (line 2) may cost more than a step" in text.stdout
    assert body["rules"][0]["work_bounded"] is True


MISSPELT_DENY = """\
rules:
  - name: deny-pages
    match: 'plan.steps.exists(s, s.tool == "notify_oncal" || "notfy" in s.tags)'
    action: deny
    reason: pages are never automated
  - name: approve-the-rest
    match: 'history.count("ticket_cont", "1h") < 3'
    action: approve
    reason: small
"""


def test_check_warns_of_a_tool_or_tag_the_catalog_lacks_and_strict_fails_on_it(
    plangate: Run, tmp_path: Path
) -> None:
    """Given a deny rule naming `notify_oncal` (a typo: it never matches, and the approve rule
    after it released every page), the tag `notfy` (`notify`), and a cap on `ticket_cont`,
    When `plangate policy check --tools plangate.demo.tools` reads it,
    Then it exits 0 (a tool may be published later) with a warning naming each rule, its line
    and the name, and the catalog's tools; with --strict it exits 1; --json lists them.
    """
    path = write(tmp_path / "misspelt.yaml", MISSPELT_DENY)

    plain = plangate("policy", "check", path, "--tools", "plangate.demo.tools")
    strict = plangate("policy", "check", path, "--tools", "plangate.demo.tools", "--strict")
    as_json = plangate("policy", "check", path, "--tools", "plangate.demo.tools", "--json")

    assert plain.returncode == 0, plain.stderr
    said = plain.stdout
    assert "warning: rule 'deny-pages' (line 2) names the tool 'notify_oncal'" in said
    assert "not in the catalog (notify_oncall, sla_threshold, ticket_count)" in said
    assert "warning: rule 'deny-pages' (line 2) names the tag 'notfy'" in said
    assert "did you mean 'notify'?" in said
    assert "warning: rule 'approve-the-rest' (line 6) names the tool 'ticket_cont'" in said
    assert strict.returncode == 1
    assert len(json.loads(as_json.stdout)["warnings"]) == 3


def test_check_warns_of_a_hold_no_reviewer_can_release(plangate: Run, tmp_path: Path) -> None:
    """Given a hold asking the role `finanse` (a typo) and one asking three approvals, and a
    reviewers file with one reviewer, of `finance`,
    When `plangate policy check` reads it with PLANGATE_REVIEWERS_FILE set,
    Then each hold is named: nobody can approve what it holds, so it expires.
    """
    team = tmp_path / "reviewers.yaml"
    assert (
        plangate("reviewers", "add", "alice", "--role", "finance", "--file", str(team)).returncode
        == 0
    )
    path = write(
        tmp_path / "holds.yaml",
        "rules:\n"
        "  - {name: role-typo, match: 'true', action: hold, reason: r, requires_role: finanse}\n"
        "  - {name: three-eyes, match: 'true', action: hold, reason: r, approvals: 3}\n",
    )

    result = plangate("policy", "check", path, env={"PLANGATE_REVIEWERS_FILE": str(team)})

    assert result.returncode == 0, result.stderr
    assert (
        "rule 'role-typo' (line 2) asks the role 'finanse', which no reviewer has" in result.stdout
    )
    assert "rule 'three-eyes' (line 3) asks 3 approvals, but only 1 reviewer may give them" in (
        result.stdout
    )


def test_check_json_answers_in_json_when_the_policy_is_wrong(plangate: Run, tmp_path: Path) -> None:
    """Given a policy whose rule does not compile,
    When `plangate policy check --json` reads it,
    Then a CI step parsing stdout gets `ok: false` and the error naming the rule, exit 2.
    """
    path = write(tmp_path / "broken.yaml", BROKEN_POLICY)

    result = plangate("policy", "check", path, "--json")

    assert result.returncode == EXIT_USAGE
    body = json.loads(result.stdout)
    assert body["ok"] is False
    assert "rule 'broken-rule' (line 8)" in body["error"]


def test_a_policy_test_may_give_only_its_steps_as_the_docs_say(
    plangate: Run, tmp_path: Path
) -> None:
    """Given a policy whose tests give `steps:` in place of `plan:`, and `plan:` as a list,
    When `plangate policy test` runs them,
    Then both pass (policy.md: "a `plan` (or only its `steps`)"; each was refused).
    """
    path = write(
        tmp_path / "steps.yaml",
        "rules:\n"
        "  - {name: reads, match: 'plan.steps.all(s, s.effect == \"read\")', action: approve,"
        " reason: r}\n"
        "  - {name: rest, match: 'true', action: hold, reason: r}\n"
        "tests:\n"
        "  - {name: steps alone, steps: [{id: c, tool: ticket_count}], expect: approve}\n"
        "  - {name: a list, plan: [{id: n, tool: notify_oncall, args: {message: x}}],"
        " expect: hold}\n",
    )

    result = plangate("policy", "test", path, "--tools", "plangate.demo.tools")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "2 passed, 0 failed" in result.stdout


def test_check_says_a_shadow_policy_lets_any_reviewer_approve_what_it_would_deny(
    plangate: Run, tmp_path: Path
) -> None:
    """Given the default policy switched to `mode: shadow` (its deny rule then holds, asking
    no role: an operator trying a candidate live let any reviewer release a destructive plan),
    When `plangate policy check` reads it,
    Then it says so.
    """
    text = Path(DEFAULT_POLICY).read_text(encoding="utf-8").replace("mode: enforce", "mode: shadow")
    path = write(tmp_path / "shadow.yaml", text)

    result = plangate("policy", "check", path)

    assert result.returncode == 0, result.stderr
    assert "may be approved by any reviewer (a deny rule asks no role)" in result.stdout


def test_check_says_what_it_could_not_check_and_still_checks_the_policy(
    plangate: Run, tmp_path: Path
) -> None:
    """Given no store, no --tools, and PLANGATE_REVIEWERS_FILE naming a file not there,
    When `plangate policy check` reads a good policy,
    Then it exits 0 as before (it exited 2 for the reviewers file) and notes what it could not
    check (the names went unchecked, silently, even with --strict).
    """
    missing = str(tmp_path / "no-reviewers.yaml")

    result = plangate("policy", "check", DEFAULT_POLICY, env={"PLANGATE_REVIEWERS_FILE": missing})

    assert result.returncode == 0, result.stderr
    assert "4 rules compile" in result.stdout
    said = " ".join(result.stderr.split())
    assert "tool and tag names not checked: no store to read the catalog from" in said
    assert "holds not checked against the reviewers" in said


def test_check_reads_a_tool_compared_from_either_side_through_an_index(
    plangate: Run, tmp_path: Path
) -> None:
    """`"ticket_cont" == plan.steps[0].tool` (the string first, the step by index) was not
    read as naming a tool; `s.args.tool` (an argument) is still not taken for a step's tool."""
    path = write(
        tmp_path / "reversed.yaml",
        "rules:\n"
        "  - name: a\n"
        '    match: \'"ticket_cont" == plan.steps[0].tool'
        ' || plan.steps.exists(s, s.args.tool == "kubectl")\'\n'
        "    action: hold\n"
        "    reason: r\n",
    )

    result = plangate("policy", "check", path, "--tools", "plangate.demo.tools")

    assert result.returncode == 0, result.stderr
    assert "names the tool 'ticket_cont'" in result.stdout
    assert "kubectl" not in result.stdout


def test_policy_check_warns_of_a_rule_below_one_matching_every_plan_and_of_one_matching_none(
    plangate: Run, tmp_path: Path
) -> None:
    """A deny written below an approve-everything rule denied nothing, and `policy check`
    said the file was fine; so did it of `match: 'false'`."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n"
        "  - {name: approve-all, match: 'true', action: approve, reason: all}\n"
        "  - {name: deny-drops, match: 'plan.steps.exists(s, s.tool == \"drop\")', "
        "action: deny, reason: never}\n"
        "  - {name: never-on, match: '(false)', action: hold, reason: later}\n"
    )

    checked = plangate("policy", "check", str(policy))

    said = " ".join(checked.stdout.split())
    assert "rule 'deny-drops' (line 3) can never decide: rule 'approve-all' (line 2)" in said
    assert "rule 'never-on' (line 4) can never decide" in said
    assert checked.returncode == 0, said  # warnings: a tool may come, a rule may move


@pytest.mark.postgres
def test_policy_check_reads_an_empty_database_and_creates_no_schema_in_it(
    plangate: Run, postgres_database_url: str
) -> None:
    """Given a deployment's PostgreSQL database with no schema yet (before `db upgrade`),
    When `plangate policy check` runs against it, Then it checks the file and the database
    stays empty: it created every table (read-only commands create no store), and the real
    `db upgrade` then said the schema was already there."""
    import sqlalchemy

    checked = plangate(
        "policy", "check", DEFAULT_POLICY, env={"PLANGATE_DATABASE_URL": postgres_database_url}
    )

    assert checked.returncode == 0, checked.stderr
    engine = sqlalchemy.create_engine(postgres_database_url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def _rules(count: int) -> str:
    match = "'plan.steps.exists(s, s.tool == \"t{0}\")'"
    rule = "  - {{name: r{0}, match: " + match + ", action: deny, reason: r}}\n"
    return "rules:\n" + "".join(rule.format(i) for i in range(count))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (_rules(1001), "has 1001 rules; a policy may have at most 1000"),
        (_rules(1) + "# " + "x" * (1024 * 1024) + "\n", "holds more than 1 MiB, the most a policy"),
    ],
    ids=["too many rules", "too large"],
)
def test_check_refuses_a_policy_over_its_bounds_in_one_line(
    plangate: Run, tmp_path: Path, text: str, said: str
) -> None:
    """Given a policy of 1,001 rules, or one of a rule and a comment past 1 MiB,
    When `plangate policy check` reads it,
    Then it exits 2 in one line naming the bound and what to do; the gate refuses it alike
    (20,000 rules in 2.5 MB were taken, and a gate reloading them held a goal for 20 s).
    """
    path = write(tmp_path / "big.yaml", text)

    result = plangate("policy", "check", path)

    assert result.returncode == EXIT_USAGE, result.stdout
    assert said in result.stderr
    assert "simplify" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
