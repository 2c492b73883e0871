"""What every command shares: settings from the environment, one-line errors, exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from plangate.addresses import broker_scheme
from plangate.cli.lazy import HELP_OPTIONS
from plangate.config import Settings
from plangate.current_settings import settings_from_environment
from plangate.errors import (
    BrokerUnavailable,
    ConfigError,
    Conflict,
    Forbidden,
    InputInvalid,
    NotFound,
    PlangateError,
    PlanInvalid,
    PolicyError,
    ServerUnavailable,
    ToolLoadError,
    Unavailable,
)
from plangate.printable import printable

P = ParamSpec("P")
R = TypeVar("R")

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_HELD = 4  # `submit --wait`: the goal waits for a person, who may take hours
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT

# `plangate worker` and `serve`: a deployment that starts them with its migration, unordered.
WaitForSchema = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="SECONDS",
        help="Wait up to SECONDS at start, not ready, while the database schema is behind this "
        "plangate's (`plangate db upgrade` has not run yet; one a newer plangate migrated is "
        "refused at once). 0: refuse at once.",
    ),
]


def group(help_text: str) -> typer.Typer:
    """Return a command group with plangate's plain help style."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        context_settings=HELP_OPTIONS,
    )


err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def require_shared_broker(settings: Settings, doing: str) -> None:
    """Refuse a command that hands work to workers over the in-process broker (ConfigError).

    `memory://` is heard only by its own process's stages: what such a command published
    reached no one, and its outbox row was marked sent, so it waited for a reconciler.
    """
    if broker_scheme(settings.broker_url) == "memory":
        raise ConfigError(
            f"PLANGATE_BROKER_URL is memory://, which only stages in this very process hear: "
            f"{doing} would reach no worker; set the deployment's broker, or use `plangate "
            "run` to run a goal here"
        )


class _MissedPublish(logging.Filter):
    """Takes the relay's warning of a publish the broker missed, for the command to say."""

    def __init__(self) -> None:
        super().__init__()
        self.problem = ""
        self.refused = False

    def filter(self, record: logging.LogRecord) -> bool:
        if problem := str(getattr(record, "broker_problem", "")):
            self.problem = problem
            self.refused = bool(getattr(record, "broker_refused", False))
        return False


_missed = _MissedPublish()


def quiet_relay() -> None:
    """Leave the warning of a publish the broker missed to the command, said once.

    The relay logs it for workers and library users; a command says it itself, with what
    was kept (`warn_broker_unreachable`), so its person reads one line, not two.
    """
    logging.getLogger("plangate.relay").addFilter(_missed)


def _not_a_move(record: logging.LogRecord) -> bool:
    # A goal's move carries where it went (`to`).
    return not (record.name == "plangate.store.goals" and hasattr(record, "to"))


def quiet_moves() -> None:
    """Leave a goal's moves to the command, which says where its goal went in its own words.

    Logged at warning for workers' log pipelines (a move to failed, or needs attention), they
    ran into a command's output as bare lines: a command sets up no logging of its own, and
    Python's last resort printed them. Filtered there, so that any handler that is set up (a
    library's, a test's) still gets them.
    """
    last_resort = logging.lastResort
    if last_resort is not None and _not_a_move not in last_resort.filters:
        last_resort.addFilter(_not_a_move)


# plangate.span_export's logger, named here: importing it would load the OpenTelemetry SDK into
# every command, most of which export nothing.
_SPAN_EXPORT_LOG = "plangate.span_export"


class _ExportTrouble(logging.Handler):
    """Says once, in the command's own words, that spans could not be sent to the collector.

    The OpenTelemetry SDK and `span_export` log through `logging`, which a command does not
    set up: their bare lines ran into the command's output.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.said = False

    def emit(self, record: logging.LogRecord) -> None:
        cause = getattr(record, "export_cause", None)
        if cause is None and record.name == _SPAN_EXPORT_LOG:
            return  # a reminder or the recovery: a command has said it once already
        if cause is None:  # another of the SDK's complaints: said as it is
            said = " ".join(record.getMessage().split())[:300]
            err_console.print(f"[yellow]warning:[/] {escape(said)}", highlight=False)
        elif not self.said:
            self.said = True
            err_console.print(
                f"[yellow]warning:[/] the traces were not sent to the collector "
                f"({escape(str(cause))}); check OTEL_EXPORTER_OTLP_ENDPOINT",
                highlight=False,
            )


def quiet_exporter() -> None:
    """Have the SDK's complaints of a collector that does not answer said once, as a warning."""
    trouble = _ExportTrouble()
    for name in ("opentelemetry", _SPAN_EXPORT_LOG):
        logger = logging.getLogger(name)
        logger.addHandler(trouble)
        logger.propagate = False


def warn_broker_unreachable(kept: str) -> None:
    """Say why the broker missed a publish, and that `kept` waits in the outbox for it."""
    problem = _missed.problem or "cannot reach the broker; check PLANGATE_BROKER_URL"
    # Refused, this command's settings are wrong, not the broker away: a worker sharing the
    # store sends it with its own.
    when = "with its own broker settings" if _missed.refused else "once the broker is back"
    err_console.print(
        f"[yellow]warning:[/] {escape(problem)}; {kept}, and a running worker sends it on {when}"
    )


# Exit 2: something to fix before trying again: an input, a file, a setting, an id that names
# nothing, a goal in a state that refuses the command, a broker or database not reachable.
# Exit 1 is kept for a goal that failed, 3 for one refused (rejected, denied, unanswered).
_USAGE_ERRORS = (
    BrokerUnavailable,
    ConfigError,
    Conflict,
    Forbidden,
    InputInvalid,
    NotFound,
    PlanInvalid,
    PolicyError,
    ServerUnavailable,
    ToolLoadError,
    Unavailable,
)


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn plangate's errors into one line on stderr and an exit code (2: fix, then retry).

    The line may quote a remote server: what a terminal would obey in it is shown escaped.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except _USAGE_ERRORS as exc:
            err_console.print(f"[red]error:[/] {escape(printable(str(exc)))}")
            raise typer.Exit(EXIT_USAGE) from exc
        except PlangateError as exc:
            err_console.print(f"[red]error:[/] {escape(printable(str(exc)))}")
            raise typer.Exit(EXIT_FAILED) from exc
        except OSError as exc:
            if exc.filename is None:  # not a file's: a fault to show whole
                raise
            # A file named on the command line (or by a setting) that cannot be read or written.
            said = f"cannot use {exc.filename}: {exc.strerror or exc}"
            err_console.print(
                f"[red]error:[/] {escape(said)}; check the path, that its folder exists, and "
                "its permissions"
            )
            raise typer.Exit(EXIT_USAGE) from exc
        except Exception as exc:
            failure = _store_failure(exc)
            if failure is None:
                raise
            err_console.print(f"[red]error:[/] {escape(printable(failure))}")
            raise typer.Exit(EXIT_USAGE) from exc

    return wrapper


def _store_failure(error: Exception) -> str | None:
    """Say what the store's failure was and what to do; None if `error` is not the store's."""
    # Only what the database's state explains; an IntegrityError or a ProgrammingError is a
    # fault of plangate's own, shown whole.
    from sqlalchemy.exc import OperationalError  # here: no command pays for it unless one failed

    from plangate.store.engine import failure_cause
    from plangate.store.sqlstates import INSUFFICIENT_PRIVILEGE, refused_role, sqlstate

    if sqlstate(error) == INSUFFICIENT_PRIVILEGE:  # a grant missing: the DBA's, not a fault
        return refused_role(failure_cause(error))
    if not isinstance(error, OperationalError):
        return None
    cause = failure_cause(error)
    if "disk is full" in cause or "No space left" in cause:
        return f"the store refused the write: {cause}; free space where the database is"
    if "readonly" in cause or "read-only" in cause:
        return f"the store refused the write: {cause}; check the database's permissions"
    if "no such table" in cause or "does not exist" in cause:
        return (
            f"the store failed: {cause}; the database is damaged or not plangate's: restore "
            "it from a backup"
        )
    return f"the store failed: {cause}; check that the database is reachable, then try again"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, then apply the command line's overrides."""
    return settings_from_environment(**{k: v for k, v in overrides.items() if v is not None})


# `plangate run|submit -`: the goal read from stdin (`< goal.txt`, a pipe).
FROM_STDIN = "-"
GOAL_HELP = "What you want done, in plain words; - reads it from stdin (at most 10,000 characters)."


def goal_text(goal: str) -> str:
    """Return the goal as given, or read from stdin for `-`, bounded by the goal's own limit.

    `-` was taken as the goal's text. Read at most the limit and a line end: input that
    fills that is longer than a goal may be, and refused as the goal's text is, by its own
    check; input that ended before is the goal, without the spaces and line ends around it.
    """
    if goal != FROM_STDIN:
        return goal
    from schemas.messages import GOAL_TEXT_MAX

    bound = GOAL_TEXT_MAX + len("\r\n") + 1
    read = sys.stdin.read(bound)
    return read if len(read) == bound else read.strip()


def require_file(ctx: typer.Context, name: str, path: Path | None, what: str) -> None:
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
