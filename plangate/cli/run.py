"""`plangate run`: one goal end to end in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plangate.cli.common import GOAL_HELP, friendly_errors, goal_text, load_settings, require_file


@friendly_errors
def run(
    ctx: typer.Context,
    goal: Annotated[str, typer.Argument(metavar="GOAL", help=GOAL_HELP)],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve a held plan without asking (for scripts).")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON event per line instead of tables (what tools print: stderr).",
        ),
    ] = False,
    tools: Annotated[
        str | None,
        typer.Option(
            metavar="MODULES",
            help="Comma-separated tool modules to load. They replace the demo tools: name "
            "plangate.demo.tools too to keep them. The run plans with exactly these tools.",
            envvar="PLANGATE_TOOLS",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Policy YAML file.",
            envvar="PLANGATE_POLICY_FILE",
            dir_okay=False,
        ),
    ] = None,
    playbook: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Playbook YAML file.",
            envvar="PLANGATE_PLAYBOOK_FILE",
            dir_okay=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            metavar="SECONDS",
            help="Give up after this many seconds: the goal is cancelled, so no further step "
            "starts (exit 1); a write step already called is let end first, within its tool's "
            "deadline, so that its outcome is recorded.",
        ),
    ] = 300.0,
    reviewer: Annotated[
        str,
        typer.Option(
            metavar="NAME", help="Name recorded on a terminal approval (default: user@terminal)."
        ),
    ] = "",
) -> None:
    """Run GOAL end to end in one process: plan, decide (ask you if held), execute.

    Uses the in-memory broker and the SQLite store in the data folder
    ($XDG_DATA_HOME/plangate, or ~/.local/share/plangate; PLANGATE_DATA_DIR overrides).

    GOAL `-` reads the goal from stdin (`plangate run - --yes < goal.txt`); with no terminal to
    ask then, a held plan needs --yes.

    Exit codes: 0 completed, 1 failed, 2 usage error, 3 rejected, denied or left unanswered,
    130 interrupted (Ctrl-C; the run says where it left the goal; at the approval prompt it
    cancels the goal), 143 and 129 for SIGTERM and SIGHUP, which end it as Ctrl-C does.
    """
    require_file(ctx, "policy", policy, "policy")
    require_file(ctx, "playbook", playbook, "playbook")
    from plangate.reviewers import name_problem

    # Recorded as who decided, in the audit log and on the goal: a name as `reviewers add` takes.
    if reviewer and (problem := name_problem(reviewer)):
        raise typer.BadParameter(problem, param_hint="--reviewer")
    from plangate.cli.goal_run import RunOptions, run_goal  # the pipeline is heavy to import

    settings = load_settings(tools=tools, policy_file=policy, playbook_file=playbook)
    _not_a_reviewer(reviewer, settings.reviewers_file)
    options = RunOptions(yes=yes, as_json=as_json, timeout=timeout, reviewer=reviewer)
    raise typer.Exit(run_goal(goal_text(goal), settings, options))


def _not_a_reviewer(name: str, reviewers_file: Path | None) -> None:
    """Refuse a terminal name that is a reviewer's: the record would show them deciding.

    A terminal proves no identity; an approval recorded as `frank`, a reviewer who never
    approved, read in the audit log like one he made with his token.
    """
    from plangate.reviewers import Reviewers

    if not name or reviewers_file is None or not reviewers_file.is_file():
        return
    if Reviewers.from_file(reviewers_file).named(name) is not None:
        raise typer.BadParameter(
            f"{name} is a reviewer in {reviewers_file}, and a terminal proves no identity: "
            "give a name of your own, or decide as them with their token (`plangate review "
            "approve`)",
            param_hint="--reviewer",
        )
