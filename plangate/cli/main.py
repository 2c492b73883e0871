"""`plangate`: run goals, export the contract, check the audit log."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from plangate import __version__
from plangate.cli.run import EXIT_FAILED, EXIT_USAGE, RunOptions, run_goal
from plangate.config import Settings
from plangate.errors import ConfigError, PlangateError, PolicyError, ToolLoadError

P = ParamSpec("P")
R = TypeVar("R")

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
schema_app = typer.Typer(
    help="Export the message contract for other languages.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
audit_app = typer.Typer(
    help="Check the hash-chained audit log.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(schema_app, name="schema")
app.add_typer(audit_app, name="audit")

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_USAGE_ERRORS = (ConfigError, PolicyError, ToolLoadError)


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn plangate's errors into one line on stderr and an exit code (2: fix your input)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except _USAGE_ERRORS as exc:
            _err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(EXIT_USAGE) from exc
        except PlangateError as exc:
            _err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(EXIT_FAILED) from exc

    return wrapper


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, then apply the command line's overrides."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = "PLANGATE_" + str(problem["loc"][0]).upper()
        raise ConfigError(f"{name}: {problem['msg']}") from exc


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plangate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Plangate: the planner decides, the gate authorises, the executor does."""


def _require_file(ctx: typer.Context, name: str, path: Path | None, what: str) -> None:
    """Fail before anything starts when a file named by an option or its variable is missing."""
    if path is None or path.is_file():
        return
    source = ctx.get_parameter_source(name)
    from_env = source is not None and source.name == "ENVIRONMENT"
    given = f"PLANGATE_{name.upper()}_FILE" if from_env else f"--{name}"
    raise ConfigError(
        f"{given} names {path}, which is not a file; fix the path, or leave it out to use "
        f"the built-in {what}"
    )


@app.command(short_help="Run a goal end to end in one process: plan, decide, execute.")
@friendly_errors
def run(
    ctx: typer.Context,
    goal: Annotated[
        str, typer.Argument(metavar="GOAL", help="What you want done, in plain words.")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve a held plan without asking (for scripts).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON event per line instead of tables.")
    ] = False,
    tools: Annotated[
        str | None,
        typer.Option(
            metavar="MODULES",
            help="Comma-separated tool modules to load.",
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
        float, typer.Option(min=0.1, metavar="SECONDS", help="Give up after this many seconds.")
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

    Exit codes: 0 completed, 1 failed, 2 usage error, 3 rejected, denied or left unanswered.
    """
    _require_file(ctx, "policy", policy, "policy")
    _require_file(ctx, "playbook", playbook, "playbook")
    settings = load_settings(tools=tools, policy_file=policy, playbook_file=playbook)
    options = RunOptions(yes=yes, as_json=as_json, timeout=timeout, reviewer=reviewer)
    raise typer.Exit(run_goal(goal, settings, options))


@schema_app.command("export", short_help="Write a JSON Schema file for every message.")
@friendly_errors
def schema_export(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Folder to write the schemas into.", file_okay=False),
    ],
) -> None:
    """Write a JSON Schema file for every message, the plan and the tool spec."""
    from schemas.export import export_json_schemas

    for path in export_json_schemas(directory):
        typer.echo(path)


@audit_app.command("verify", short_help="Check every link of the audit log's hash chain.")
@friendly_errors
def audit_verify() -> None:
    """Check every link of the audit log's hash chain; exit 1 at the first broken one."""
    from plangate.store import audit, open_store

    store = open_store(load_settings().resolved_database_url())
    report = audit.verify(store)
    if report.ok:
        typer.echo(f"audit log intact: {report.entries} entries")
        return
    _err.print(f"[red]audit log broken[/] at entry {report.broken_at}: {report.problem}")
    raise typer.Exit(EXIT_FAILED)
