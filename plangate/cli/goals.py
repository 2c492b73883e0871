"""`plangate goals`: steer goals — cancel one that should not go on."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from plangate.cli.common import friendly_errors, group
from plangate.cli.review_access import NO_TOKEN, ServerOption, TokenFileOption, resolve
from plangate.errors import ConfigError

app = group("Steer goals: cancel one that should not go on.")


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
    running finish). An ended goal cannot be (exit 1). Authenticates like `plangate review`:
    PLANGATE_REVIEWER_TOKEN or --token-file, through --server URL or the reviewers file.
    """
    access = resolve(server, token_file, deciding=False)  # the store alone will do
    if access.token is None:
        raise ConfigError(NO_TOKEN)
    if access.server:
        with access.api() as api:
            state = api.cancel_goal(goal_id, reason)
    else:
        from plangate.client import Client

        reviewer = access.reviewer()
        with Client(access.settings) as client:
            state = asdict(client.cancel(goal_id, reviewer.name, reason))
    if as_json:
        typer.echo(json.dumps(state, default=str))
    else:
        typer.echo(f"goal {goal_id}: {state['status']} — {state.get('reason') or ''}")
