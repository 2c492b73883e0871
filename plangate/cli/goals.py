"""`plangate goals`: steer goals — cancel one that should not go on."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from plangate.cli.common import err_console, friendly_errors, group, load_settings
from plangate.cli.render import json_default, shown
from plangate.cli.review_access import NO_TOKEN, ServerOption, TokenFileOption, resolve
from plangate.errors import ConfigError
from schemas import utcnow

app = group(
    "Find and steer goals: list them, cancel one that should not go on, retry one that failed."
)


@app.command("list", short_help="List goals, newest first: state, age, source, decision.")
@friendly_errors
def list_goals(
    state: Annotated[
        list[str] | None,
        typer.Option(
            metavar="STATE", help="Only goals in this state (e.g. held); again for several."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="AGE|TIME", help="Only goals submitted since: 2h, 7d, or ISO time."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="AGE|TIME", help="Only goals submitted before: 2h, 7d, or ISO time."),
    ] = None,
    search: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Only goals whose text holds TEXT.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many.")] = 20,
    after: Annotated[
        str | None,
        typer.Option(metavar="CURSOR", help="The next page: the cursor the previous page printed."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the newest goals from the store, with the filters given.

    `plangate status GOAL_ID` shows one of them in full: its plan, decision and each step's
    output. When more goals match than --limit, the cursor of the next page is printed on
    stderr: pass it with --after (and the same filters) to go on.
    """
    from plangate.client import Client

    with Client(load_settings()) as client:
        page = client.list_goals(
            state=state, since=since, search=search, limit=limit, cursor=after, until=until
        )
    if as_json:
        for goal in page.goals:
            typer.echo(json.dumps(asdict(goal), default=json_default))
        if page.next_cursor:
            err_console.print(f"next page: --after {page.next_cursor}")
        return
    if not page.goals:
        err_console.print("no goals match")
        return
    table = Table(box=None, show_edge=False)
    for column in ("GOAL", "STATE", "AGE", "SOURCE", "REV", "DECIDED BY", "TEXT"):
        table.add_column(column, overflow="fold" if column == "TEXT" else "ellipsis")
    for goal in page.goals:
        # Shown, not read as markup or controls: a goal's text is anyone's (a `[/x]` in it
        # broke the whole list; an escape sequence reached the operator's terminal).
        table.add_row(
            shown(goal.goal_id),
            goal.status,
            _age(goal.created_at),
            shown(goal.source or ""),
            "" if goal.revision is None else str(goal.revision),
            shown(goal.decided_by or ""),
            shown(goal.text if len(goal.text) <= 80 else goal.text[:79] + "…"),
        )
    Console().print(table)
    if page.next_cursor:
        err_console.print(f"next page: --after {page.next_cursor}  (more goals match than --limit)")


def _age(at: datetime) -> str:
    seconds = max(0, int((utcnow() - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command("cancel", short_help="Cancel a goal: no further step of it starts.")
@friendly_errors
def cancel(
    goal_id: Annotated[str, typer.Argument(metavar="GOAL_ID")],
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded).")] = "",
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Cancel GOAL_ID, as the reviewer your token names (audited with who and why).

    A goal still being planned, held, approved, running or waiting for a person may be
    cancelled: nothing more of it is decided, and a run starts no further step (steps already
    running finish). So may a rejected or failed one, which feedback may plan again:
    cancelling stops that. A completed, denied, expired or unplannable goal cannot be (exit 2).
    Authenticates like `plangate review`: PLANGATE_REVIEWER_TOKEN or --token-file, through
    --server URL or the reviewers file.
    """
    _steer("cancel", goal_id, reason, server, token_file, as_json)


@app.command("retry", short_help="Send a failed or expired goal back to the planner.")
@friendly_errors
def retry(
    goal_id: Annotated[str, typer.Argument(metavar="GOAL_ID")],
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded).")] = "",
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Retry GOAL_ID: a failed, expired or unplannable goal is planned again, as a new revision.

    Never around the gate: the new plan is decided under today's policy (held for a person if
    the policy says so), and no earlier approval can run it. Any other goal is refused (exit 2).
    Authenticates like `plangate goals cancel`.
    """
    _steer("retry", goal_id, reason, server, token_file, as_json)


def _steer(
    action: Literal["cancel", "retry"],
    goal_id: str,
    reason: str,
    server: str | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Cancel or retry a goal as the reviewer the token names, through serve or the store."""
    # Cancelling needs the store alone; a retried goal needs a planner to take it up.
    access = resolve(server, token_file, deciding=action == "retry", doing="retrying a goal")
    if access.token is None:
        raise ConfigError(NO_TOKEN)
    if access.server:
        with access.api() as api:
            steer = api.cancel_goal if action == "cancel" else api.retry_goal
            state = steer(goal_id, reason)
    else:
        from plangate.client import Client

        reviewer = access.reviewer()
        with Client(access.settings) as client:
            if action == "cancel":
                moved = client.cancel(goal_id, reviewer.name, reason, reviewer.roles)
            else:
                moved = client.retry(goal_id, reviewer.name, reason, reviewer.roles)
            state = asdict(moved)
    if as_json:
        typer.echo(json.dumps(state, default=json_default))
    else:
        said = state.get("reason")  # none for a move the goal's state gives no reason for
        typer.echo(f"goal {goal_id}: {state['status']}" + (f" — {said}" if said else ""))
