"""`plangate`: the command line. Each command group lives in its own module."""

from __future__ import annotations

import os
from typing import Annotated

import typer

# typer vendors its own click (typer>=0.29), as `plangate.cli.lazy` says.
from typer import _click as click

from plangate import __version__
from plangate.cli.lazy import HELP_OPTIONS, LazyCommand, LazyGroup, Loader, attribute
from plangate.printable import undecodable_at


def _review() -> typer.Typer:
    from plangate.cli import review, settle

    settle.register(review.app)
    return review.app


def _group(name: str) -> Loader:
    return attribute(f"plangate.cli.{name}", "app")


class Commands(LazyGroup):
    """plangate's commands, in the order `plangate --help` lists them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Refuse an argument whose bytes are no UTF-8 in one line, before any command runs.

        A terminal in another encoding hands Python bytes it keeps as lone surrogates: a
        search, an id or a path of them ended in a UnicodeEncodeError's traceback.
        """
        for arg in args:
            if (at := undecodable_at(arg)) is not None:
                shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
                click.echo(
                    f"error: the argument '{shown}' is not UTF-8 text (a byte that is no "
                    f"character, at character {at + 1}): set your terminal to UTF-8, or pass "
                    "it as UTF-8 text",
                    err=True,
                )
                ctx.exit(2)
        return super().parse_args(ctx, args)

    table = (
        LazyCommand(
            "run",
            "Run a goal end to end in one process: plan, decide, execute.",
            attribute("plangate.cli.run", "run"),
        ),
        LazyCommand(
            "submit",
            "Submit a goal to the workers; --wait follows it.",
            attribute("plangate.cli.submit", "submit"),
        ),
        LazyCommand(
            "status", "Show where a goal stands.", attribute("plangate.cli.submit", "status")
        ),
        LazyCommand(
            "trace",
            "Print a goal's trace id and its Jaeger link.",
            attribute("plangate.cli.trace", "trace"),
        ),
        LazyCommand(
            "worker",
            "Run one stage (planner, gate, executor) as a worker process.",
            attribute("plangate.cli.worker", "worker"),
        ),
        LazyCommand(
            "serve",
            "Serve the HTTP API: goal intake (JSON, CloudEvents); /docs.",
            attribute("plangate.cli.serve", "serve"),
        ),
        LazyCommand("schema", "Export the message contract for other languages.", _group("schema")),
        LazyCommand("audit", "Check and export the hash-chained audit log.", _group("audit")),
        LazyCommand("db", "Manage the store's schema (SQLite or PostgreSQL).", _group("db")),
        LazyCommand("dlq", "Inspect and replay the dead-letter queue.", _group("dlq")),
        LazyCommand("goals", "Find and steer goals: list, cancel, retry.", _group("goals")),
        LazyCommand(
            "tools", "Show the tool catalog and when each tool was last offered.", _group("tools")
        ),
        LazyCommand("playbook", "Show the offline planner's playbooks.", _group("playbook")),
        LazyCommand("review", "Review held plans: list, show, approve, reject, edit.", _review),
        LazyCommand("reviewers", "Manage reviewers: names, roles, tokens.", _group("reviewers")),
        LazyCommand("policy", "Check a policy file and try it on plans.", _group("policy")),
    )


app = typer.Typer(
    name="plangate",
    cls=Commands,
    help=(
        "Split LLM agent planning from execution: a goal becomes a typed plan, the plan is "
        "approved by policy or a person, and exactly the approved plan runs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: no boxes, no `<bool>` beside every flag, one-line errors.
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,  # and its commands' contexts, which inherit it
)


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
    from plangate.process_name import name_process

    name_process("cli")  # `worker` and `serve` name themselves
    if context.invoked_subcommand not in ("worker", "serve"):
        # A command that ends in seconds must not wait 10 s at exit for a collector that
        # is down: its spans get one short try (workers and serve keep the SDK's default).
        from plangate import telemetry
        from plangate.cli.common import quiet_exporter, quiet_moves

        telemetry.short_lived()
        quiet_exporter()
        quiet_moves()
