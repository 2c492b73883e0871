"""The `plangate` command, run as a user runs it: a real process, its output and exit code.

Each test gets its own data folder and notifications file; the demo tools read the seed numbers
(128 open tickets against an SLA of 100) unless a test overrides them.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from plangate import __version__
from plangate.store import GoalRow, StepRunRow, open_store
from tests.openai_stub import error, running_stub
from tests.support import eventually, outer_environment

ROOT = Path(__file__).resolve().parent.parent
SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
RUN_OPTIONS = ("--yes", "-y", "--json", "--tools", "--policy", "--playbook", "--timeout")


@dataclass
class Cli:
    """Runs `python -m plangate` in a clean environment rooted in one test's folder."""

    folder: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, answers: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run plangate with `args`, typing `answers` on stdin (none: stdin is at its end)."""
        return subprocess.run(
            [sys.executable, "-m", "plangate", *args],
            input=answers,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=self.env | (env or {}),
            cwd=self.folder,
            timeout=60,
            check=False,
        )

    @property
    def data_folder(self) -> Path:
        return self.folder / "xdg" / "plangate"

    def notifications(self) -> list[dict[str, Any]]:
        """Return the pages the demo notify tool has sent so far."""
        path = self.folder / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command with no PLANGATE_*, OPENAI_* or OTEL_* settings of the outer environment."""
    terminal = ("XDG_DATA_HOME", "COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR")
    inherited = {k: v for k, v in outer_environment().items() if k not in terminal}
    env = inherited | {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PLANGATE_DEMO_NOTIFICATIONS": str(tmp_path / "notifications.jsonl"),
        "PYTHONIOENCODING": "utf-8",
    }
    return Cli(tmp_path, env)


def step_line(output: str, step: str, tool: str, status: str) -> str:
    """Return the line showing one finished step, failing the test if there is none."""
    match = re.search(rf"^.*\b{step}\s+{tool}\s+{status}\b.*$", output, re.MULTILINE)
    assert match, f"no line shows step {step} ({tool}) {status} in:\n{output}"
    return match.group(0)


def test_run_with_yes_plans_approves_and_runs_the_seed_goal(cli: Cli) -> None:
    """Given the seed numbers: 128 open tickets, SLA 100.

    When `plangate run SEED --yes` runs,
    Then it exits 0 and shows the plan held by policy, approved, and its three steps run: the
    count (128), the SLA (100) and the notification; one page is sent to on-call.
    """
    result = cli("run", SEED_GOAL, "--yes")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    out = result.stdout
    assert "Decision: hold by rule hold-writes" in out
    assert "Decision: approve by " in out
    assert step_line(out, "count", "ticket_count", "succeeded").endswith("→ 128")
    assert step_line(out, "sla", "sla_threshold", "succeeded").endswith("→ 100")
    step_line(out, "notify", "notify_oncall", "succeeded")
    assert "Completed · 3 succeeded" in out
    [page] = cli.notifications()
    assert page["message"] == "Ticket count 128 exceeded SLA 100"


def test_run_under_the_sla_skips_the_notification(cli: Cli) -> None:
    """Given 42 open tickets (PLANGATE_DEMO_TICKET_COUNT=42), under the SLA of 100.

    When the seed goal runs with --yes,
    Then it completes, the notify step is shown as skipped, and no page is sent.
    """
    result = cli("run", SEED_GOAL, "--yes", env={"PLANGATE_DEMO_TICKET_COUNT": "42"})

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert step_line(result.stdout, "count", "ticket_count", "succeeded").endswith("→ 42")
    step_line(result.stdout, "notify", "notify_oncall", "skipped")
    assert "Completed · 2 succeeded, 1 skipped" in result.stdout
    assert cli.notifications() == []


def test_typing_a_at_the_prompt_approves_the_held_plan(cli: Cli) -> None:
    """Given the seed goal, held by policy because it writes.

    When the person at the terminal types "a",
    Then they were shown the dry run first (the reads' outputs, the page notify would send),
    and the plan runs to completion and on-call is paged once.
    """
    result = cli("run", SEED_GOAL, answers="a\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert "Preview (a dry run: reads ran for real, nothing was written)" in result.stdout
    assert "previewed" in result.stdout
    assert "[a]pprove, [r]eject or [s]how the plan JSON?" in result.stderr
    assert "Decision: approve by " in result.stdout
    assert len(cli.notifications()) == 1


def test_the_prompt_takes_the_words_too_in_any_case(cli: Cli) -> None:
    """Typing "Approve" (the word, capitalised) at the prompt approves, as "a" does."""
    result = cli("run", SEED_GOAL, answers="Approve\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert len(cli.notifications()) == 1


@pytest.mark.parametrize("answer", ["y", "YES"])
def test_the_prompt_takes_y_and_yes_as_approve(cli: Cli, answer: str) -> None:
    """Typing "y" or "yes" (any case) at the prompt approves, as a yes/no question takes them:
    they were refused with "Please select one of the available options", naming none."""
    result = cli("run", SEED_GOAL, answers=f"{answer}\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert len(cli.notifications()) == 1


def test_the_prompt_takes_n_as_reject(cli: Cli) -> None:
    """Typing "n" at the prompt, then a comment, rejects the plan: nothing runs (exit 3)."""
    result = cli("run", SEED_GOAL, answers="n\nnot today\n")

    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "Decision: reject by " in result.stdout
    assert "not today" in result.stdout
    assert cli.notifications() == []


def test_an_answer_the_prompt_does_not_take_is_refused_naming_the_choices(cli: Cli) -> None:
    """Given the seed goal held, When the person types "maybe", then "a",
    Then "maybe" is refused with the answers the prompt takes, and "a" approves."""
    result = cli("run", SEED_GOAL, answers="maybe\na\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert "Answer a (or approve, y, yes), r (or reject, n, no), or s (or show)" in result.stderr
    assert len(cli.notifications()) == 1


def test_typing_s_shows_the_plan_json_then_a_approves_it(cli: Cli) -> None:
    """Given the seed goal, held by policy.

    When the person types "s" and then "a",
    Then the plan's JSON is shown (its three steps and tools), and then the plan runs.
    """
    result = cli("run", SEED_GOAL, answers="s\na\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    for tool in ("ticket_count", "sla_threshold", "notify_oncall"):
        assert f'"tool": "{tool}"' in result.stderr
    assert result.stderr.count("[a]pprove, [r]eject or [s]how the plan JSON?") == 2
    assert len(cli.notifications()) == 1


def test_typing_r_with_a_comment_rejects_the_plan_and_runs_nothing(cli: Cli) -> None:
    """Given the seed goal, held by policy.

    When the person types "r" and the comment "too noisy",
    Then plangate exits 3, the decision shows the rejection with the comment, and no page is
    sent.
    """
    result = cli("run", SEED_GOAL, answers="r\ntoo noisy\n")

    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "Decision: reject by " in result.stdout
    assert "too noisy" in result.stdout
    assert "Rejected" in result.stdout
    assert "✓" not in result.stdout
    assert cli.notifications() == []


def test_input_ending_after_r_still_rejects_the_plan(cli: Cli) -> None:
    """Given the seed goal, held by policy.

    When the person types "r" and the input ends before a comment,
    Then the plan is rejected with the default comment, plangate exits 3, and no page is sent.
    """
    result = cli("run", SEED_GOAL, answers="r\n")

    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "rejected at the terminal" in result.stdout
    assert "Aborted" not in result.stderr
    assert cli.notifications() == []


def test_no_answer_on_stdin_leaves_the_plan_held_and_runs_nothing(cli: Cli) -> None:
    """Given the seed goal, held by policy, and nobody to answer (stdin is empty).

    When plangate asks,
    Then it exits 3 and says that nothing was run and how to approve in scripts.
    """
    result = cli("run", SEED_GOAL, answers="")

    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "\nno answer: nothing was run; the goal stays held" in result.stderr
    assert cli.notifications() == []


def test_a_goal_no_playbook_matches_fails_with_one_line_saying_how_to_add_one(cli: Cli) -> None:
    """Given no LLM configured, so the playbook planner plans.

    When the goal matches no playbook,
    Then plangate exits 1 and stderr is one line: no playbook matched, and how to add one;
    then the goal's id and trace (to retry it once a playbook matches: it named neither).
    """
    result = cli("run", "bake a chocolate cake", "--yes")

    assert result.returncode == EXIT_FAILED
    [line, ids] = result.stderr.splitlines()
    assert line.startswith("error: no playbook matched")
    assert "add a pattern" in line
    assert "PLANGATE_PLAYBOOK_FILE" in line
    assert re.fullmatch(r"goal [0-9a-f]{32}  ·  trace [0-9a-f]{32}", ids), ids


def test_an_unknown_option_is_a_usage_error(cli: Cli) -> None:
    """When `plangate run` gets an option it does not have, it exits 2 and names it."""
    result = cli("run", SEED_GOAL, "--bogus")

    assert result.returncode == EXIT_USAGE
    assert "No such option: --bogus" in result.stderr
    assert "plangate run --help" in result.stderr


def test_a_missing_policy_file_is_a_one_line_usage_error_before_anything_starts(
    cli: Cli,
) -> None:
    """Given --policy naming a file that does not exist.

    When plangate runs,
    Then it exits 2 with one line naming the option and the file, and has created nothing.
    """
    result = cli("run", SEED_GOAL, "--yes", "--policy", "/nope.yaml")

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "error: --policy names /nope.yaml, which is not a file; fix the path, or leave it out "
        "to use the built-in policy"
    ]
    assert not cli.data_folder.exists()
    assert cli.notifications() == []


def test_a_missing_policy_file_named_by_the_environment_names_the_variable(cli: Cli) -> None:
    """Given PLANGATE_POLICY_FILE naming a file that does not exist.

    When plangate runs, then it exits 2 with one line naming the variable and the file.
    """
    result = cli("run", SEED_GOAL, "--yes", env={"PLANGATE_POLICY_FILE": "/nope.yaml"})

    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith("error: PLANGATE_POLICY_FILE names /nope.yaml, which is not a file")


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (("run", "", "--yes"), {}, "error: the goal is empty: say what should be done, in words"),
        (
            ("run", SEED_GOAL, "--yes"),
            {"PLANGATE_DATABASE_URL": "mysql://user:secret@db/plangate"},
            "error: PLANGATE_DATABASE_URL: mysql is not a store plangate supports; use "
            "sqlite:///path/plangate.db or postgresql+psycopg://user@host/db",
        ),
        (
            ("submit", SEED_GOAL),
            {"PLANGATE_BROKER_URL": "bogus://x"},
            "error: PLANGATE_BROKER_URL: 'bogus' is not a broker plangate speaks; use "
            "redis://host:6379/0, amqp://user:password@host:5672// or memory://",
        ),
        (
            ("run", SEED_GOAL, "--yes"),
            {"PLANGATE_DATABASE_URL": "postgresql+asyncpg://user@db/plangate"},
            "error: PLANGATE_DATABASE_URL names the driver postgresql+asyncpg, which is not "
            "installed (asyncpg); use postgresql+psycopg:// (installed with plangate)",
        ),
        (
            ("run", SEED_GOAL, "--yes"),
            {"PLANGATE_PLAYBOOK_FILE": str(Path(__file__).parent / "data" / "bad_playbook.yaml")},
            f"error: playbook file {Path(__file__).parent / 'data' / 'bad_playbook.yaml'} is "
            "invalid: playbooks.0.steps.0.id: Input should be a valid string",
        ),
    ],
    ids=["empty goal", "mysql", "bogus broker", "missing driver", "bad playbook"],
)
def test_bad_input_is_one_line_saying_what_to_fix_and_exit_2(
    cli: Cli, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    """An empty goal, a database plangate does not support, a driver not installed: each is
    one line on stderr that says what to change, exit 2, and nothing is paged."""
    result = cli(*args, env=env)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [said]
    assert cli.notifications() == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("status", "zzzzzzzz"), "no goal 'zzzzzzzz'; check the id (`plangate goals list` shows"),
        (("trace", "zzzzzzzz"), "no goal 'zzzzzzzz'; check the id (`plangate goals list` shows"),
        (("goals", "list", "--state", "finished"), "no goal state 'finished'; one of: approved"),
        (("goals", "list", "--since", "yesterday"), "since 'yesterday' is neither an age"),
        # An age, but one no date can be: it was "neither an age nor an ISO time".
        (("goals", "list", "--since", "99999999999d"), "since '99999999999d' is too long an age"),
        (("goals", "list", "--since", "999999w"), "since '999999w' goes back past year 1"),
    ],
    ids=[
        "status of no goal",
        "trace of no goal",
        "no such state",
        "unreadable since",
        "too long an age",
        "an age before year 1",
    ],
)
def test_an_id_or_filter_that_names_nothing_is_one_line_and_exit_2(
    cli: Cli, args: tuple[str, ...], said: str
) -> None:
    """Exit 1 means a goal failed; an id that names no goal is something to fix: exit 2."""
    assert cli("db", "upgrade").returncode == 0

    result = cli(*args)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {said}")


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(cli: Cli) -> None:
    """`plangate serve` on a port something else listens on says so in one line, exit 2."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port))

    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert line.endswith("stop what uses it, or pass --port (or --host)")


def test_json_prints_one_event_per_line_ending_with_the_result(cli: Cli) -> None:
    """When the seed goal runs with --yes --json,
    Then every stdout line is one JSON object with an event name, in order: the goal, the plan,
    the decisions, the three steps, and last the result with exit code 0 (--yes does not wait
    for the hold's dry run: it shows up only if it comes first, as at most one line).
    """
    result = cli("run", SEED_GOAL, "--yes", "--json")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = [e for e in lines if e["event"] != "plan.previewed"]
    assert len(lines) - len(events) <= 1
    assert [e["event"] for e in events] == [
        "goal.submitted",
        "plan.proposed",
        "decision",
        "decision",
        "step.finished",
        "step.finished",
        "step.finished",
        "result",
    ]
    assert [e["action"] for e in events if e["event"] == "decision"] == ["hold", "approve"]
    outputs = {e["step_id"]: e["output"] for e in events if e["event"] == "step.finished"}
    assert (outputs["count"], outputs["sla"]) == (128, 100)
    goal_id = events[0]["goal_id"]
    assert events[-1] == {
        "event": "result",
        "goal_id": goal_id,
        "trace_id": events[0]["trace_id"],
        "outcome": "completed",
        "exit_code": 0,
        "steps": {"count": "succeeded", "sla": "succeeded", "notify": "succeeded"},
    }
    assert all(e["goal_id"] == goal_id for e in events if "goal_id" in e)


def test_help_lists_the_commands_and_options(cli: Cli) -> None:
    """When a user asks `plangate --help`, it exits 0 and names every command and option."""
    result = cli("--help")

    assert result.returncode == 0
    for word in ("run", "schema", "audit", "--version", "--help"):
        assert word in result.stdout
    assert "<bool>" not in result.stdout


def test_run_help_mentions_every_option_and_the_exit_codes(cli: Cli) -> None:
    """When a user asks `plangate run --help`,
    Then it names GOAL, every option with its environment variable, and the exit codes, and
    flags are shown without a value placeholder.
    """
    result = cli("run", "--help")

    assert result.returncode == 0
    out = result.stdout
    for option in (*RUN_OPTIONS, "--reviewer", "--help", "GOAL"):
        assert option in out
    for variable in ("PLANGATE_TOOLS", "PLANGATE_POLICY_FILE", "PLANGATE_PLAYBOOK_FILE"):
        assert variable in out
    assert "Exit codes: 0 completed, 1 failed, 2 usage error, 3 rejected" in out
    assert re.search(r"^\s+-y, --yes\s+Approve", out, re.MULTILINE)
    assert "<bool>" not in out


@pytest.mark.parametrize(
    "command", [(), ("run",), ("goals",), ("goals", "cancel"), ("review", "approve")]
)
def test_h_is_help_as_help_is_for_every_command(cli: Cli, command: tuple[str, ...]) -> None:
    """When a user asks `plangate -h`, `plangate run -h` (any command or group),
    Then it prints that command's help and exits 0, as `--help` does (it said "No such option:
    -h", exit 2).
    """
    result = cli(*command, "-h")

    assert result.returncode == 0, result.stderr
    assert result.stdout == cli(*command, "--help").stdout
    assert re.search(r"^\s+-h, --help\s", result.stdout, re.MULTILINE), result.stdout


def test_schema_export_writes_a_json_schema_per_message(cli: Cli) -> None:
    """When `plangate schema export DIR` runs,
    Then it exits 0, prints each file it wrote, and each is a JSON Schema (2020-12).
    """
    result = cli("schema", "export", "contract")

    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    names = {path.name for path in written}
    assert {"goal.submitted.schema.json", "plan.schema.json", "dead.letter.schema.json"} <= names
    for path in written:
        schema = json.loads((cli.folder / path).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert sorted(p.name for p in (cli.folder / "contract").iterdir()) == sorted(names)


def test_version_prints_the_installed_version(cli: Cli) -> None:
    """When a user asks `plangate --version`, it prints `plangate <version>` and exits 0."""
    result = cli("--version")

    assert result.returncode == 0
    assert result.stdout == f"plangate {__version__}\n"


def _policy(cli: Cli, **hold: object) -> str:
    """A policy file that approves read-only plans and holds the rest with `hold`'s options."""
    rules = [
        {
            "name": "reads",
            "match": 'plan.steps.all(s, s.effect == "read")',
            "action": "approve",
            "reason": "it only reads",
        },
        {"name": "writes", "match": "true", "action": "hold", "reason": "it writes", **hold},
    ]
    path = cli.folder / "policy.yaml"
    path.write_text(json.dumps({"rules": rules}))  # JSON is YAML
    return str(path)


def test_a_role_rule_at_the_terminal_says_a_deployment_decides_it(cli: Cli) -> None:
    """Given a rule that requires the `finance` role to approve the seed plan,
    When it is approved at the terminal (`--yes`), Then the run ends at once with exit 2,
    saying that the terminal approves with no role and who can decide it; nothing runs.
    (It said "root does not have it: ask a reviewer who does", though the reviewers file gave
    that name the role.)"""
    policy = _policy(cli, requires_role="finance")

    result = cli("run", SEED_GOAL, "--yes", "--policy", policy)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert "requires the role 'finance'" in result.stderr
    assert "approves with no role (a terminal proves no identity)" in result.stderr
    assert (
        "the goal stays held until a reviewer with a token decides or cancels it" in result.stderr
    )
    assert cli.notifications() == []


def test_a_rule_asking_two_approvers_ends_the_run_held_after_the_terminal_s_one(
    cli: Cli,
) -> None:
    """Given a rule that asks two reviewers to approve the seed plan,
    When it is approved at the terminal, Then the approval is counted and the run ends held
    (exit 3), saying the others approve through a deployment (it waited out its timeout)."""
    policy = _policy(cli, approvals=2)

    result = cli("run", SEED_GOAL, "--yes", "--policy", policy, "--timeout", "20")

    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "approval is counted, and the rule asks for more reviewers" in result.stderr
    assert cli.notifications() == []


def test_ctrl_c_while_a_step_runs_says_where_it_left_the_goal_and_exits_130(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a run whose read step hangs (a call that never returns),
    When Ctrl-C is pressed, Then the run says the goal is cancelled (no further step starts),
    waits a few seconds for the step, and ends with 130 (it said nothing, and the process
    waited on the stuck call for as long as the tool's deadline)."""
    playbook = tmp_path / "playbook.yaml"
    steps = [{"id": "first", "tool": "stalled_read", "args": {"number": 1}}]
    stall = {"name": "stall", "pattern": "stall", "steps": steps}
    playbook.write_text(json.dumps({"playbooks": [stall]}))
    marker = tmp_path / "marker"
    env = cli.env | {"PYTHONPATH": str(ROOT), "TAKEOVER_MARKER": str(marker)}
    args = ["run", "stall", "--tools", "tests.takeover_tools", "--playbook", str(playbook)]
    with subprocess.Popen(
        [sys.executable, "-m", "plangate", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cli.folder,
    ) as run:
        eventually(marker.exists, timeout=30, what="the hanging step")
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)

    assert run.returncode == 130, stderr
    assert "interrupted: the goal is cancelled, so no further step of it starts" in stderr
    assert "is still running; ending without waiting for it" in stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (
            "redis://127.0.0.1:abc/0",
            "error: PLANGATE_BROKER_URL: the broker URL's port is not a number from 1 to 65535",
        ),
        (
            "redis://127.0.0.1:6379/abc",
            "error: PLANGATE_BROKER_URL: the Redis database in the broker URL is a number "
            "(redis://host:6379/0), not 'abc'",
        ),
    ],
)
def test_a_broker_url_that_cannot_work_is_refused_in_one_line_and_nothing_is_stored(
    cli: Cli, url: str, said: str
) -> None:
    """It was a traceback, after the goal was stored (and ran later: a retry made two)."""
    assert cli("db", "upgrade").returncode == 0

    result = cli("submit", SEED_GOAL, env={"PLANGATE_BROKER_URL": url})

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(said)
    assert cli("goals", "list").stderr.strip() == "no goals match"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("policy", "check", "/dev/zero"),
            "error: /dev/zero holds more than 1 MiB, the most a policy file may (is it the",
        ),
        (
            ("review", "list", "--token-file", "/dev/zero"),
            "error: cannot read --token-file /dev/zero: it holds more than 4096 KiB",
        ),
        (
            ("review", "list", "--token-file", "{latin1}"),
            "error: cannot read --token-file {latin1}: it is not UTF-8 text (byte 0 is not)",
        ),
        (
            ("reviewers", "list", "--file", "/dev/zero"),
            "error: cannot read the reviewers file /dev/zero: it holds more than 4096 KiB",
        ),
    ],
    ids=["policy", "token-file", "token-not-utf8", "reviewers-file"],
)
def test_a_file_that_is_not_the_one_meant_is_one_line_not_a_traceback_or_a_hang(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    """/dev/zero was read until memory ran out (a MemoryError traceback) or forever."""
    latin1 = tmp_path / "token.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1")[::-1])
    args = tuple(a.format(latin1=latin1) for a in args)

    result = cli(*args)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(said.format(latin1=latin1))


def test_a_run_whose_write_may_or_may_not_have_happened_says_which_step_and_why(
    cli: Cli, tmp_path: Path
) -> None:
    """It named the step `step`, blamed a dead executor for the tool's own timeout, and said to
    settle it with a command that refuses to run without a deployment."""
    playbook = tmp_path / "playbook.yaml"
    steps = [{"id": "wire", "tool": "wire_money", "args": {"amount": 10}}]
    playbook.write_text(
        json.dumps({"playbooks": [{"name": "w", "pattern": "^wire", "steps": steps}]})
    )
    env = {"PYTHONPATH": str(ROOT)}
    args = ("--tools", "tests.unknown_outcome_tools", "--playbook", str(playbook))

    result = cli("run", "wire it", "--yes", *args, env=env)

    said = " ".join((result.stdout + result.stderr).split())  # as printed, unwrapped
    assert result.returncode == 1, said
    assert (
        "step 'wire' may or may not have happened (the bank did not answer within 30 s; its "
        "tool is not idempotent, so nothing calls it again by itself)"
    ) in said
    assert "; this run ends here and never calls it again" in said
    assert "review settle" not in said


def test_submitting_over_the_in_process_broker_is_refused_and_stores_nothing(cli: Cli) -> None:
    """memory:// reaches only stages in the same process: `submit` said "submitted", and no
    worker anywhere heard of the goal."""
    assert cli("db", "upgrade").returncode == 0

    result = cli("submit", SEED_GOAL, env={"PLANGATE_BROKER_URL": "memory://"})

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [
        "error: PLANGATE_BROKER_URL is memory://, which only stages in this very process hear: "
        "submitting would reach no worker; set the deployment's broker, or use `plangate run` "
        "to run a goal here"
    ]
    assert cli("goals", "list").stderr.strip() == "no goals match"


def test_a_goal_of_dash_is_read_from_stdin(cli: Cli) -> None:
    """Given the seed goal in a file, When `plangate run - --yes < goal.txt` runs,
    Then the goal is the file's text (its line end dropped) and it runs to completion: the
    text "-" was stored as the goal."""
    result = cli("run", "-", "--yes", "--json", answers=SEED_GOAL + "\n")

    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["outcome"] == "completed"
    store = open_store(f"sqlite:///{cli.data_folder / 'plangate.db'}")
    with closing(store), store.reading() as session:
        assert session.scalars(select(GoalRow.text)).all() == [SEED_GOAL]


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_goal_on_stdin_over_the_goals_limit_is_refused_as_an_argument_is(
    cli: Cli, command: str
) -> None:
    """Given 10,001 characters on stdin (and more after), When `plangate run|submit -` reads
    it, Then it exits 2 with the goal's own limit, and stores no goal."""
    assert cli("db", "upgrade").returncode == 0

    result = cli(command, "-", "--yes" if command == "run" else "--wait", answers="x" * 20_000)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [
        "error: the goal's text: String should have at most 10000 characters"
    ]
    assert cli("goals", "list").stderr.strip() == "no goals match"


def test_an_empty_idempotency_key_is_refused_in_one_line(cli: Cli) -> None:
    assert cli("db", "upgrade").returncode == 0

    result = cli("submit", SEED_GOAL, "--key", " ")

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [
        "error: the idempotency key is empty: give one that names this goal, or none"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("run", "count tickets \udcff", "--yes"),
        ("goals", "list", "--search", "count tickets \udcff"),
    ],
    ids=["a goal", "a search"],
)
def test_an_argument_whose_bytes_are_no_utf_8_says_so_in_one_line(
    cli: Cli, args: tuple[str, ...]
) -> None:
    """An argument typed in a terminal that is not UTF-8 was refused as "JSON text ... holds a
    lone surrogate" (a goal, to someone who typed no JSON), or ended in a traceback (a search,
    an id, a path).

    Given an argument whose last byte (0xff) is no UTF-8,
    When a command is given it,
    Then one line says it is not UTF-8 text and where, and how to send it; nothing runs.
    """
    result = cli(*args)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [
        "error: the argument 'count tickets \\xff' is not UTF-8 text (a byte that is no "
        "character, at character 15): set your terminal to UTF-8, or pass it as UTF-8 text"
    ]


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (
            ("schema", "asyncapi", "out.yaml", "--namespace", "BAD NS"),
            {},
            "'BAD NS' is no namespace: a lowercase letter, then up to 31 of a-z, 0-9, _ and -",
        ),
        (
            ("status", "abcdef12"),
            {"PLANGATE_JAEGER_URL": "notaurl"},
            "error: PLANGATE_JAEGER_URL: 'notaurl' is no web address; give the Jaeger UI's",
        ),
    ],
    ids=["asyncapi-namespace", "jaeger-url"],
)
def test_a_value_refused_elsewhere_is_refused_here_too(
    cli: Cli, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    """The namespace PLANGATE_NAMESPACE refuses was taken by `schema asyncapi`; a Jaeger URL
    that is no address made links `notaurl/trace/...`."""
    result = cli(*args, env=env)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert said in " ".join(result.stderr.split())


def test_kombu_s_failover_list_of_broker_urls_is_still_accepted() -> None:
    from plangate.config import Settings

    url = "redis://h1:6379/0;redis://h2:6379/0"

    assert Settings(broker_url=url).broker_url == url


def test_db_upgrade_names_the_database_and_says_when_it_made_a_new_one(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a data folder with no database yet,
    When `plangate db upgrade` runs twice,
    Then the first says it made a new database and where (a mistyped path shows as new), and
    the second that the schema there is already current.
    """
    first = cli("db", "upgrade")
    second = cli("db", "upgrade")

    database = tmp_path / "xdg" / "plangate" / "plangate.db"
    assert first.returncode == second.returncode == 0
    assert first.stdout.startswith("created the schema ")
    assert first.stdout.rstrip().endswith(f"in {database}, a new database")
    assert second.stdout.startswith(f"the schema of {database} is already at ")


def test_run_ends_at_its_timeout_while_the_model_server_holds_the_planner(cli: Cli) -> None:
    """Given a model server that answers 429 asking to retry in 100 s (the SDK waits that long),
    When `plangate run --timeout 2` plans a goal with it,
    Then the run says it timed out and ends a second later with exit 1 (planning is abandoned,
    not waited for); it used to wait for the planner's thread, for as long as the server asked.
    """
    with running_stub() as stub:
        slow_down = error(429, "slow down", headers={"Retry-After": "100"})
        stub.script(slow_down, slow_down)
        env = {
            "PLANGATE_PLANNER": "openai",
            "OPENAI_BASE_URL": stub.base_url,
            "OPENAI_API_KEY": "sk-run-timeout-test",
        }
        started = time.monotonic()
        result = cli("run", SEED_GOAL, "--timeout", "2", env=env)

    assert result.returncode == EXIT_FAILED, result.stderr
    assert "Timed out after 2 s" in result.stdout
    assert "a plan being drafted) is still running after 1 s" in result.stderr
    assert time.monotonic() - started < 30


def slow_playbook(tmp_path: Path, *steps: dict[str, object]) -> Path:
    """A playbook of `steps` (tools of tests.slow_write_tools) for any goal with "slow" in it."""
    playbook = tmp_path / "playbook.yaml"
    playbook.write_text(
        json.dumps({"playbooks": [{"name": "slow", "pattern": "slow", "steps": list(steps)}]})
    )
    return playbook


READ = {"id": "r", "tool": "slow_read"}
WRITE_AFTER_READ = {"id": "w", "tool": "slow_write", "args": {"message": "hello"}, "after": ["r"]}


def test_run_ending_at_its_timeout_lets_a_write_in_flight_end_and_records_it(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a run whose write step takes 3 s, and `--timeout 1`,
    When the timeout passes while the write runs,
    Then the run says it waits for the write, and ends once it has ended: the step is
    recorded as succeeded, not left in flight for a person to settle as of unknown outcome.
    """
    playbook = slow_playbook(tmp_path, {"id": "w", "tool": "slow_write", "args": {"message": "hi"}})
    env = {"PYTHONPATH": str(ROOT)}
    args = ["run", "write it slowly", "--yes", "--timeout", "1", "--playbook", str(playbook)]
    result = cli(*args, "--tools", "tests.slow_write_tools", env=env)

    assert result.returncode == EXIT_FAILED, result.stderr
    assert "Timed out after 1 s" in result.stdout
    assert "waiting for write step w to end" in result.stderr
    store = open_store(f"sqlite:///{cli.data_folder / 'plangate.db'}")
    with closing(store), store.reading() as session:
        statuses = session.scalars(select(StepRunRow.status)).all()
    assert statuses == ["succeeded"]


def test_run_giving_up_at_its_timeout_starts_no_further_step(cli: Cli, tmp_path: Path) -> None:
    """Given a plan whose write waits on a read that takes 1.5 s, and `--timeout 1`,
    When the timeout passes while the read runs (it ends while the stages are let stop),
    Then the run says the goal is cancelled and exits 1, and the write never starts: the stages
    ran on until stopped, so the write started after the run had said it gave up (and a plan
    approved in time was carried out whole: a script retrying on exit 1 wrote twice).
    """
    playbook = slow_playbook(tmp_path, READ, WRITE_AFTER_READ)
    env = {"PYTHONPATH": str(ROOT)}
    args = ["run", "slow read then write", "--yes", "--timeout", "1", "--playbook", str(playbook)]
    result = cli(*args, "--tools", "tests.slow_write_tools", env=env)

    assert result.returncode == EXIT_FAILED, result.stderr
    assert "Timed out after 1 s; the goal is cancelled" in result.stdout
    store = open_store(f"sqlite:///{cli.data_folder / 'plangate.db'}")
    with closing(store), store.reading() as session:
        ran = dict(session.execute(select(StepRunRow.step_id, StepRunRow.status)).all())
        goal = session.scalars(select(GoalRow)).one()
    assert ran.get("w") == "skipped"  # recorded as not run: the goal was cancelled first
    assert goal.status == "cancelled"
    assert "plangate run --timeout 1" in (goal.status_reason or "")


@pytest.mark.parametrize("name", ["R" * 201, "alice\nbob"], ids=["too-long", "two-lines"])
def test_run_refuses_a_reviewer_name_reviewers_add_would_refuse(cli: Cli, name: str) -> None:
    """Given `--reviewer` too long for a decision, or spanning two lines,
    Then the run refuses it before it starts, with exit 2 and what a name may be; it crashed
    with a traceback at the approval (leaving the goal held), or put a line break in the audit
    log and the goals list.
    """
    result = cli("run", SEED_GOAL, "--yes", "--reviewer", name)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert "is not a reviewer name" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cli.data_folder / "plangate.db").exists()


def test_ctrl_c_while_a_read_runs_starts_no_write_after_it(cli: Cli, tmp_path: Path) -> None:
    """Given a plan whose write waits on a read that takes 1.5 s,
    When Ctrl-C is pressed while the read runs,
    Then the read ends, the write never starts, and the goal is cancelled by the terminal's
    user; the run said the goal was "left running, and nothing carries it on" while the
    stages, let finish their work, went on to run the write. Its summary counts the write
    skipped, and says no more: it said "Cancelled after every step ran", of a write never run.
    """
    playbook = slow_playbook(tmp_path, READ, WRITE_AFTER_READ)
    args = ["run", "slow read then write", "--yes", "--playbook", str(playbook)]
    with subprocess.Popen(
        [sys.executable, "-m", "plangate", *args, "--tools", "tests.slow_write_tools"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env | {"PYTHONPATH": str(ROOT)},
        cwd=cli.folder,
    ) as run:
        store = open_store(f"sqlite:///{cli.data_folder / 'plangate.db'}")
        with closing(store):

            def running() -> bool:  # from then on the read runs, for 1.5 s
                with store.reading() as session:
                    return session.scalars(select(GoalRow.status)).all() == ["running"]

            eventually(running, timeout=30, what="the run")
            run.send_signal(signal.SIGINT)
            stdout, stderr = run.communicate(timeout=30)
            with store.reading() as session:
                ran = dict(session.execute(select(StepRunRow.step_id, StepRunRow.status)).all())
                goal = session.scalars(select(GoalRow)).one()

    assert run.returncode == 130, stderr
    assert "interrupted: the goal is cancelled" in stderr
    assert ran == {"r": "succeeded", "w": "skipped"}  # the write recorded as not run
    assert "Cancelled · 1 succeeded, 1 skipped" in stdout, stdout
    assert goal.status == "cancelled"
    assert "interrupted at the terminal (Ctrl-C)" in (goal.status_reason or "")


def test_json_stdout_holds_only_events_while_a_tool_prints(cli: Cli, tmp_path: Path) -> None:
    """Given a tool that prints (Python's print, a write to descriptor 1, a subprocess's echo),
    When a run of it prints `--json`,
    Then every stdout line is still one JSON event, and what the tool printed is on stderr:
    it was written between the events, and a consumer reading JSON lines failed.
    """
    playbook = tmp_path / "playbook.yaml"
    chatty = {"name": "chatty", "pattern": "chatty", "steps": [{"id": "c", "tool": "chatty_read"}]}
    playbook.write_text(json.dumps({"playbooks": [chatty]}))
    args = ["run", "a chatty count", "--json", "--playbook", str(playbook)]
    result = cli(*args, "--tools", "tests.chatty_tools", env={"PYTHONPATH": str(ROOT)})

    assert result.returncode == EXIT_COMPLETED, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "result"
    assert [e["output"] for e in events if e["event"] == "step.finished"] == [7]
    for said in ("python print", "raw write to descriptor 1", "a subprocess the tool started"):
        assert said in result.stderr


@pytest.mark.parametrize("verb", ["replay", "purge"])
def test_dlq_naming_letters_and_all_at_once_is_refused(cli: Cli, verb: str) -> None:
    """`dlq replay ID --all` replayed every letter, the ids unheeded; it is one line now."""
    confirmed = ("--yes",) if verb == "purge" else ()
    result = cli("dlq", verb, "some-letter", "--all", *confirmed)

    assert result.returncode == EXIT_USAGE
    assert "name the dead letters to " + verb + ", or pass --all (not both)" in result.stderr


def test_run_refuses_to_record_a_terminal_decision_under_a_reviewer_s_name(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a deployment's reviewers file naming frank,
    When `plangate run --reviewer frank` approves at the terminal,
    Then it is refused before anything runs: the audit log showed frank approving, a reviewer
    who never did, just like an approval he made with his token.
    """
    from plangate.reviewers import add_reviewer

    reviewers = tmp_path / "reviewers.yaml"
    add_reviewer(reviewers, "frank", ["finance"])
    env = {"PLANGATE_REVIEWERS_FILE": str(reviewers)}

    refused = cli("run", SEED_GOAL, "--yes", "--reviewer", "frank", env=env)
    allowed = cli("run", SEED_GOAL, "--yes", "--reviewer", "ops-oncall", env=env)

    assert refused.returncode == EXIT_USAGE, refused.stderr
    assert "frank is a reviewer in" in refused.stderr
    assert "a terminal proves no identity" in refused.stderr
    assert allowed.returncode == EXIT_COMPLETED, allowed.stderr


def ctrl_c_during_the_write(
    cli: Cli, tmp_path: Path, seconds: float, again_after: float | None = None
) -> tuple[int, str, str]:
    """Run a plan of one slow, non-idempotent write (`pay`), and press Ctrl-C once it has begun
    (and again `again_after` seconds later). Return the exit code, stdout and stderr.
    """
    playbook = tmp_path / "playbook.yaml"
    steps = [{"id": "pay", "tool": "pay", "args": {"amount": 40}}]
    pay = {"name": "pay", "pattern": "pay", "steps": steps}
    playbook.write_text(json.dumps({"playbooks": [pay]}))
    log = tmp_path / "writes.log"
    env = cli.env | {
        "PYTHONPATH": str(ROOT),
        "INTERRUPTED_WRITE_LOG": str(log),
        "INTERRUPTED_WRITE_SECONDS": str(seconds),
    }
    args = ["run", "pay it", "--yes", "--tools", "tests.interrupted_write_tools"]
    with subprocess.Popen(
        [sys.executable, "-m", "plangate", *args, "--playbook", str(playbook)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cli.folder,
    ) as run:
        eventually(lambda: log.exists(), timeout=30, what="the write to begin")
        run.send_signal(signal.SIGINT)
        if again_after is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.wait(timeout=again_after)  # the grace under way, or already ended
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=40)
    return run.returncode, stdout, stderr


def test_ctrl_c_during_a_write_that_ends_within_the_grace_shows_it_and_says_it_went_out(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a run whose only step, a write, takes 2 s,
    When Ctrl-C is pressed while it is being called,
    Then the run waits for it, prints its line as it ends (as a run does), says the write went
    out, and its summary counts it: "Cancelled after every step ran · 1 succeeded". It said
    "Cancelled" with no step done while the write went on to happen (told so, a user could run
    the goal again and pay twice); then counted the step but never showed it, and read
    "Cancelled" of a goal whose every step had run.
    """
    code, stdout, stderr = ctrl_c_during_the_write(cli, tmp_path, seconds=2)

    assert code == 130, stderr
    assert (tmp_path / "writes.log").read_text().split() == ["start", "end"]
    assert "→ paid 40" in step_line(stdout, "pay", "pay", "succeeded")
    assert "write step pay went out: it succeeded before the run ended" in stderr
    assert "Cancelled after every step ran · 1 succeeded" in stdout, stdout
    assert "may or may not" not in stderr


def test_ctrl_c_during_a_write_outlasting_the_grace_leaves_it_unknown_for_a_person_to_settle(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a run whose write takes 20 s,
    When Ctrl-C is pressed while it is being called, and the run ends without waiting for it,
    Then the run says the write may or may not have happened, gives the command that records
    which (with the plan's and the step's ids: it named neither), and counts it `unknown`;
    `review unsettled` lists it, and settling it records what a person found, while the goal
    stays cancelled. It stayed `running` for ever, and nothing asked anyone whether the
    payment had been made.
    """
    code, stdout, stderr = ctrl_c_during_the_write(cli, tmp_path, seconds=20)

    assert code == 130, stderr
    assert "write step pay was still being called: it may or may not have happened" in stderr
    assert "no write step went out" not in stderr  # which said the opposite, just below it
    assert "Cancelled · 1 unknown" in stdout, stdout
    reviewers = {"PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml")}
    added = cli("reviewers", "add", "carol", env=reviewers)
    assert added.returncode == 0, added.stderr
    as_carol = reviewers | {"PLANGATE_REVIEWER_TOKEN": added.stdout.strip().splitlines()[-1]}
    unsettled = cli("review", "unsettled", "--json", env=as_carol)
    assert unsettled.returncode == 0, unsettled.stderr
    (waiting,) = json.loads(unsettled.stdout)
    assert (waiting["step_id"], waiting["goal_status"]) == ("pay", "cancelled")
    assert (  # a command that works as printed: it names the call unknown (its since)
        "it may or may not have happened; check, then record which: `plangate review settle "
        f"{waiting['plan_id']} pay --since {waiting['since']} --happened` (or --not-happened)"
    ) in stderr
    assert "ended mid-call after the goal was cancelled" in waiting["reason"]

    settled = cli(
        "review", "settle", waiting["plan_id"], "pay", "--since", waiting["since"], "--happened",
        "--comment", "bank says paid", env=as_carol,
    )  # fmt: skip

    assert settled.returncode == 0, settled.stderr
    status = json.loads(cli("status", waiting["goal_id"], "--json").stdout)
    assert status["status"] == "cancelled"
    assert status["steps"]["pay"] == "succeeded"
    assert cli("audit", "verify").returncode == 0


def test_run_with_yes_calls_each_read_once_making_no_dry_run_nobody_sees(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a plan that reads an order's total, then refunds it (held: it writes),
    When it is run with `--yes`, Then the read is called once, by the run: the dry run made
    for a reviewer, never shown under `--yes`, called it a first time (a paid API, twice).
    Without `--yes`, the dry run is made and shown before the question.
    """
    steps = [
        {"id": "total", "tool": "order_total", "args": {"order_id": "A-1"}},
        {"id": "refund", "tool": "refund", "args": {"order_id": "A-1", "amount": "${total}"}},
    ]
    playbook = tmp_path / "playbook.yaml"
    refund = {"name": "refund", "pattern": "refund", "steps": steps}
    playbook.write_text(json.dumps({"playbooks": [refund]}))
    calls = tmp_path / "reads.log"
    env = {"PYTHONPATH": str(ROOT), "COUNTED_READS": str(calls)}
    args = ["run", "refund A-1", "--tools", "tests.counted_read_tools", "--playbook", str(playbook)]

    unseen = cli(*args, "--yes", env=env)

    assert unseen.returncode == EXIT_COMPLETED, unseen.stderr
    assert calls.read_text().splitlines() == ["preview=False"]
    calls.unlink()
    asked = cli(*args, answers="a\n", env=env)
    assert asked.returncode == EXIT_COMPLETED, asked.stderr
    assert calls.read_text().splitlines() == ["preview=True", "preview=False"]


def test_a_second_ctrl_c_during_the_grace_ends_the_run_at_once_with_the_write_unknown(
    cli: Cli, tmp_path: Path
) -> None:
    """Given a run whose write takes 20 s, When Ctrl-C is pressed, and again a second later,
    Then the run ends at once, the write `unknown` and the audit chains sealed: it waited out
    the whole write (Python's thread join, interrupted, then reported the thread ended), and
    exited with the chains unsealed, so `audit verify` warned of removals.
    """
    started = time.monotonic()
    code, stdout, stderr = ctrl_c_during_the_write(cli, tmp_path, seconds=20, again_after=1)

    assert code == 130, stderr
    assert time.monotonic() - started < 15, stderr
    assert "Cancelled · 1 unknown" in stdout, stdout
    verified = cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "sealed by 1 checkpoint" in verified.stdout
    assert "warning" not in verified.stderr


def test_a_run_seals_its_own_store_but_not_one_named_by_a_database_url(
    cli: Cli, tmp_path: Path
) -> None:
    """The data folder's store is the run's: sealed as the run ends. A store named by
    PLANGATE_DATABASE_URL may be a deployment's, whose monitors know its gate's key, not this
    folder's: a checkpoint signed here made each of their checks exit 2 ("cannot check")."""
    assert cli("run", SEED_GOAL, "--yes").returncode == EXIT_COMPLETED
    shared = {"PLANGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'deployment.db'}"}
    assert cli("db", "upgrade", env=shared).returncode == 0
    assert cli("run", SEED_GOAL, "--yes", env=shared).returncode == EXIT_COMPLETED

    assert "sealed by 1 checkpoint" in cli("audit", "verify").stdout
    assert "sealed by" not in cli("audit", "verify", env=shared).stdout
