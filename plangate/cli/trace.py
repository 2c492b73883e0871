"""`plangate trace GOAL_ID`: the goal's trace id and where to read the trace."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from plangate.cli.common import friendly_errors, load_settings
from plangate.errors import NotFound


@friendly_errors
def trace(
    goal_id: Annotated[str, typer.Argument(metavar="GOAL_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print the trace id of GOAL_ID and its link in Jaeger (PLANGATE_JAEGER_URL).

    The trace id is the one the goal was submitted with; every stage continues it.
    """
    from plangate import telemetry
    from plangate.store import open_store
    from plangate.store.goals import get_goal

    settings = load_settings()
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        with store.reading() as session:
            trace_id = telemetry.trace_id_of(get_goal(session, goal_id, typed=True).trace_headers)
    finally:
        store.close()
    if trace_id is None:
        raise NotFound(f"goal {goal_id} carries no trace context (it was stored without one)")
    link = f"{settings.jaeger_url.rstrip('/')}/trace/{trace_id}"
    if as_json:
        typer.echo(json.dumps({"goal_id": goal_id, "trace_id": trace_id, "jaeger_url": link}))
    else:
        typer.echo(f"trace {trace_id}\n{link}")
