"""`plangate`: the command line. Each command group lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from plangate import __version__
from plangate.cli import (
    audit,
    db,
    dlq,
    goals,
    playbook,
    policy,
    review,
    reviewers,
    schema,
    settle,
)
from plangate.cli.run import run
from plangate.cli.serve import serve
from plangate.cli.submit import status, submit
from plangate.cli.trace import trace
from plangate.cli.worker import worker

app = typer.Typer(
    name="plangate",
    help=(
        "Split LLM agent planning from execution: a goal becomes a typed plan, the plan is "
        "approved by policy or a person, and exactly the approved plan runs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: no boxes, no `<bool>` beside every flag, one-line errors.
    rich_markup_mode=None,
)
app.command(short_help="Run a goal end to end in one process: plan, decide, execute.")(run)
app.command(short_help="Submit a goal to the workers; --wait follows it.")(submit)
app.command(short_help="Show where a goal stands.")(status)
app.command(short_help="Print a goal's trace id and its Jaeger link.")(trace)
app.command(short_help="Run one stage (planner, gate, executor) as a worker process.")(worker)
app.command(short_help="Serve the HTTP API: goal intake (JSON, CloudEvents); /docs.")(serve)
app.add_typer(schema.app, name="schema")
app.add_typer(audit.app, name="audit")
app.add_typer(db.app, name="db")
app.add_typer(dlq.app, name="dlq")
app.add_typer(goals.app, name="goals")
app.add_typer(playbook.app, name="playbook")
settle.register(review.app)
app.add_typer(review.app, name="review")
app.add_typer(reviewers.app, name="reviewers")
app.add_typer(policy.app, name="policy")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plangate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Plangate: the planner decides, the gate authorises, the executor does."""
    if context.invoked_subcommand not in ("worker", "serve"):
        # A command that ends in seconds must not wait 10 s at exit for a collector that
        # is down: its spans get one short try (workers and serve keep the SDK's default).
        from plangate import telemetry

        telemetry.short_lived()
