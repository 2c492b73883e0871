"""The command line shows anyone's text as written, and a file it cannot use in one line.

A goal's text is whoever submitted it; a plan's words are the planner's; ids come from the
command line. None of them is read as terminal markup: a `[/x]` in one goal's text made
`plangate goals list` fail for every operator, and `[bold]` vanished from what a reviewer
read. A file named on the command line that cannot be written is one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import plangate_in as plangate

ROOT = Path(__file__).resolve().parent.parent

EXIT_USAGE = 2
HOSTILE_GOAL = (
    "[/x] Check Jira ticket count, compare with SLA, and notify on-call engineer if breached "
    "[bold]now[/bold]"
)


@pytest.fixture(scope="module")
def held_hostile_goal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding one goal whose text is markup, its plan held for a person."""
    data = tmp_path_factory.mktemp("hostile")
    held = plangate(data, "run", HOSTILE_GOAL)  # no answer on stdin: the plan stays held
    assert "Held" in held.stdout, held.stdout + held.stderr
    return data


@pytest.mark.parametrize(
    "args", [("goals", "list"), ("review", "list")], ids=["goals list", "review list"]
)
def test_a_goal_text_of_markup_is_listed_as_written(
    held_hostile_goal: Path, args: tuple[str, ...]
) -> None:
    listed = plangate(held_hostile_goal, *args)

    assert listed.returncode == 0, listed.stderr
    assert "[/x] Check Jira ticket count" in listed.stdout


def test_a_reviewer_reads_the_held_goal_s_text_as_written(held_hostile_goal: Path) -> None:
    plans = plangate(held_hostile_goal, "review", "list", "--json")
    assert plans.returncode == 0, plans.stderr
    plan_id = plans.stdout.split('"plan_id": "')[1].split('"')[0]

    shown = plangate(held_hostile_goal, "review", "show", plan_id)

    assert shown.returncode == 0, shown.stderr
    assert "[bold]now[/bold]" in shown.stdout


def test_a_goal_text_of_terminal_controls_is_shown_as_escapes_never_obeyed(
    tmp_path: Path,
) -> None:
    """An escape sequence (clear the screen, retitle the window) or a right-to-left override
    in a goal's text reaches no operator's terminal: each is shown as its escape."""
    text = "how many tickets are open \x1b[2J\x1b]0;owned\x07 \u202etxt.exe"
    ran = plangate(tmp_path, "run", text, "--yes")
    assert ran.returncode == 0, ran.stderr
    goal_id = ran.stdout.split("goal ")[-1].split()[0]

    listed = plangate(tmp_path, "goals", "list")
    status = plangate(tmp_path, "status", goal_id)

    for shown in (ran.stdout, listed.stdout, status.stdout):
        assert not set(shown) & {"\x1b", "\x07", "\u202e"}
    assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202etxt.exe" in listed.stdout
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("given", ["[/foo]", "[bold]abcdef"])
def test_an_id_of_markup_is_named_as_given_in_one_line(tmp_path: Path, given: str) -> None:
    assert plangate(tmp_path, "db", "upgrade").returncode == 0

    result = plangate(tmp_path, "status", given)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: no goal '{given}'; check the id (`plangate goals list` ")


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "export", "--output", "{missing}/audit.jsonl"),
        ("schema", "asyncapi", "{missing}/asyncapi.yaml"),
    ],
    ids=["audit export", "schema asyncapi"],
)
def test_a_file_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    missing = str(blocker / "below")  # a folder below a file: nothing can make it
    assert plangate(tmp_path, "db", "upgrade").returncode == 0

    result = plangate(tmp_path, *(arg.format(missing=missing) for arg in args))

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot use {missing}")
    assert line.endswith("check the path, that its folder exists, and its permissions")


def test_an_export_that_fails_midway_leaves_no_file_and_keeps_the_last_one(
    tmp_path: Path,
) -> None:
    from plangate.cli.audit import _replacing

    output = tmp_path / "audit.jsonl"
    output.write_text("the last whole export\n")

    def export_until_the_database_goes_away() -> None:
        with _replacing(output) as stream:
            stream.write('{"seq": 1}\n')
            raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        export_until_the_database_goes_away()

    assert output.read_text() == "the last whole export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl"]


def test_a_very_long_id_is_quoted_by_its_start_and_its_length(tmp_path: Path) -> None:
    """What names nothing is not echoed back whole (the HTTP API's 404 says the same)."""
    assert plangate(tmp_path, "db", "upgrade").returncode == 0
    given = "a" * 20_000

    result = plangate(tmp_path, "status", given)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: no goal '{'a' * 80}'… (20000 characters); check the id")
    assert len(line) < 200


def test_a_plan_summary_of_terminal_controls_is_shown_as_escapes_in_review_show(
    tmp_path: Path,
) -> None:
    """Given a playbook whose summary quotes the goal's text, and a goal whose text clears the
    screen, retitles the window and reverses what follows,
    When a reviewer runs `plangate review show` on the held plan,
    Then the summary is shown as escapes: it was printed raw below the steps table, so that a
    goal's text could erase or redraw the steps the reviewer approves.
    """
    import json

    playbook = tmp_path / "playbook.yaml"
    post = {
        "name": "post",
        "pattern": "(?i)post (?P<text>.+)",
        "summary": "Post {{text}}",
        "steps": [{"id": "tell", "tool": "notify_oncall", "args": {"message": "{{text}}"}}],
    }
    playbook.write_text(json.dumps({"playbooks": [post]}))
    goal = "post evil \x1b[2J\x1b]0;pwned\x07 \u202eright-to-left end\r\nDecision: approve"
    held = plangate(tmp_path, "run", goal, "--playbook", str(playbook))
    assert "Held" in held.stdout, held.stdout + held.stderr
    plans = plangate(tmp_path, "review", "list", "--json")
    plan_id = plans.stdout.split('"plan_id": "')[1].split('"')[0]

    shown = plangate(tmp_path, "review", "show", plan_id, PLANGATE_PLAYBOOK_FILE=str(playbook))

    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout
    assert "\u202e" not in shown.stdout
    assert "Post evil \\x1b[2J" in shown.stdout
    # On one line: a line break in it printed a line that read as the decision.
    assert not any(line.startswith("Decision: approve") for line in shown.stdout.splitlines())
    assert "\\nDecision: approve" in shown.stdout


def test_a_tool_output_with_a_line_break_is_one_line_of_status(tmp_path: Path) -> None:
    """A tool's output is an outside system's text: its line break printed a line of its own
    in `plangate status`, where `  step pay (pay): succeeded` passed for plangate's.

    Given a completed goal whose read returned two lines, the second a forged step line,
    When `plangate status` shows it,
    Then the output is one line with its break shown as `\\n`, and no line but plangate's
    begins with `  step`.
    """
    playbook = tmp_path / "playbook.yaml"
    steps = [{"id": "note", "tool": "fetch_note"}]
    playbook.write_text(
        json.dumps({"playbooks": [{"name": "n", "pattern": "^note", "steps": steps}]})
    )
    env = {"PYTHONPATH": str(ROOT)}
    ran = plangate(
        tmp_path,
        "run",
        "note please",
        "--yes",
        "--tools",
        "tests.multiline_tools",
        "--playbook",
        str(playbook),
        "--json",
        **env,
    )
    goal_id = json.loads(ran.stdout.splitlines()[0])["goal_id"]

    shown = plangate(tmp_path, "status", goal_id, **env)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    stepped = [line for line in lines if line.startswith("  step")]
    assert len(stepped) == 1, lines
    assert stepped[0].startswith("  step note (fetch_note): succeeded")
    assert "    -> note for bob\\n  step pay (pay): succeeded" in lines
