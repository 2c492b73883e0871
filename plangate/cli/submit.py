"""`plangate submit` and `plangate status`: goals for the workers, from the command line."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from plangate.cli.common import (
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_HELD,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    GOAL_HELP,
    err_console,
    friendly_errors,
    goal_text,
    load_settings,
    quiet_relay,
    require_shared_broker,
    warn_broker_unreachable,
)
from plangate.cli.render import json_default, output_note
from plangate.errors import quoted
from plangate.printable import printable_line

if TYPE_CHECKING:
    from plangate.client import GoalHandle, GoalStatus
    from plangate.config import Settings
    from plangate.run_marks import RunState

_REFUSED = {"denied", "rejected", "expired", "cancelled"}  # decided not to run: exit 3
# With `--wait`, how long a goal may stay `submitted` before the command asks about workers.
UNTAKEN_HINT_SECONDS = 10.0
_SHOWN_CHARS = 300  # of a step's output, in text; --json shows all of it


def _exit_code(status: str) -> int:
    if status == "completed":
        return EXIT_COMPLETED
    return EXIT_REFUSED if status in _REFUSED else EXIT_FAILED


def _print(
    current: GoalStatus, as_json: bool, *, aside: bool = False, run: RunState | None = None
) -> None:
    """Print the goal's state: JSON, or lines for people (`aside`: on stderr).

    `run`: whether the `plangate run` carrying out the goal is live or over, if one is.
    """
    if as_json:
        typer.echo(
            json.dumps({**asdict(current), "terminal": current.terminal}, default=json_default)
        )
        return

    def say(line: str) -> None:  # a goal's words are anyone's, a step's output a tool's
        # One line each: a line break in a tool's output printed a line of its own below it,
        # where it passed for plangate's (`step pay (pay): succeeded`). --json shows all.
        typer.echo(printable_line(line), err=aside)

    for line in _heading(current):
        say(line)
    for step in current.results:
        took = f" in {step.duration_ms:g} ms" if step.duration_ms is not None else ""
        if step.claimed_until is not None:
            took = f" ({_claim(step.claimed_until, run)})"
        if step.settled_by is not None:
            found = "happened" if step.status == "succeeded" else "not happened"
            took = f" (settled as {found} by {step.settled_by})"
        say(f"  step {step.step_id} ({step.tool}): {step.status}{took}")
        if note := output_note(step.status, step.output, step.error):
            say(f"    -- {_shown(note)}")
        elif step.status == "succeeded":
            say(f"    -> {_shown(step.output)}")
        elif step.error:
            say(f"    !! {_shown(step.error)}")
    if current.trace_id:
        say(f"  trace {current.trace_id}")


def _claim(until: datetime, run: RunState | None) -> str:
    """Say who holds a write's claim and what happens if they are gone."""
    if run == "live":
        return f"claimed until {until:%H:%M:%S} UTC, by its `plangate run`, still under way"
    if run == "ended":  # no sweep of the embedded mode comes back to it: the next run does
        return (
            "its `plangate run` ended mid-call: the next `plangate run` on this data folder "
            "marks it unknown, for a person to settle"
        )
    return (
        f"claimed until {until:%H:%M:%S} UTC: if its executor is gone, it is marked unknown "
        "then, for a person to settle"
    )


def _heading(current: GoalStatus) -> list[str]:
    """Return the lines before the steps: state, plan and who made it, hold, decision, waits."""
    said = current.reason and current.reason.strip().lower() != current.status
    lines = [f"goal {current.goal_id}: {current.status}" + (f" — {current.reason}" if said else "")]
    if current.plan_id:
        kept = current.summary_from_revision
        whose = f" (summary from revision {kept}, not changed by the edit)" if kept else ""
        lines.append(f"  plan {current.plan_id} rev {current.revision}: {current.summary}{whose}")
        why = ""
        if current.edit_comment is not None:  # an edit's: what its editor said
            why = f": {current.edit_comment}" if current.edit_comment else " (no reason given)"
        lines.append(f"  by {current.planner}{why}")
    if current.held_by:
        lines.append(f"  held by rule {current.held_by}")
    if current.catalog_problem:
        lines.append(f"  cannot be approved as it is: it {current.catalog_problem}")
    if current.submitted_by:
        lines.append(f"  submitted by {current.submitted_by} (as the submitter said)")
    if current.retried:
        retry = current.retried
        why = f": {retry.reason}" if retry.reason else ""
        lines.append(
            f"  retried by {retry.by} at {retry.at.isoformat()} (it was {retry.from_state}){why}"
        )
    if current.decision:
        d = current.decision
        why = f" — {d['reason']}" if d["reason"] else ""  # a reviewer may give no comment
        lines.append(f"  decision: {d['action']} by {d['rule'] or d['decided_by']}{why}")
    if current.approvers and current.approvers_signed:
        lines.append(f"  approved by: {', '.join(current.approvers)} (the gate's signed approval)")
    elif current.approvers:  # not yet counted: a reviewer removed since counts no more
        given = ", ".join(current.approvers)
        lines.append(
            f"  approvals given: {given} (the gate counts them as it releases the plan; "
            "`plangate review show` says which count now)"
        )
    return lines + _waits(current)


def _waits(current: GoalStatus) -> list[str]:
    """Return what the goal waits for, beyond its state, if anything."""
    lines = []
    if current.unoffered:
        lines.append(f"  waiting for an executor: {_unoffered(current.unoffered)}")
    if current.approval_unchecked:
        lines.append(
            f"  waiting: an executor cannot check the approval: {current.approval_unchecked}"
        )
    if current.unsent_since:
        lines.append(
            f"  waiting for the broker: a message of it is stored, not sent, since "
            f"{current.unsent_since.isoformat()} (the broker was away or refused the sender); "
            "a running worker sends it on, and its log says why not yet"
        )
    return lines


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=json_default)
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}… ({len(text)} characters; --json shows all)"


def _review_hint(current: GoalStatus, server_url: str | None) -> str:
    where = f"`plangate review show {current.plan_id}`"
    if server_url:
        where += f" or open {server_url.rstrip('/')}/reviews/{current.plan_id}"
    return f"goal {current.goal_id} waits for a person: {where}"


def _settled_through(current: GoalStatus, settings: Settings) -> GoalStatus:
    """Return `current` with its settle commands going through serve, where they must.

    On the store a settle checks the token against the reviewers file; without one it goes
    through serve: PLANGATE_SERVER_URL's, or a URL the reader gives.
    """
    from plangate.unknown_calls import SERVE_URL, through

    if current.reason is None or (settings.reviewers_file and not settings.server_url):
        return current
    return replace(current, reason=through(current.reason, settings.server_url or SERVE_URL))


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


@friendly_errors
def submit(
    goal: Annotated[str, typer.Argument(metavar="GOAL", help=GOAL_HELP)],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the goal ends.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, metavar="SECONDS", help="How long --wait waits.")
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Idempotency key: the same key twice yields one goal."),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Metadata (repeatable; at most 64, values up to 2000 characters).",
        ),
    ] = None,
) -> None:
    """Submit GOAL to the workers (they must be running: `plangate worker ...`).

    Prints the goal id (alone on stdout, for `GOAL=$(plangate submit ...)`; where it is, on
    stderr), or with --json its state. With --wait, follows it to the end and prints each
    step's output. GOAL `-` reads the goal from stdin (`plangate submit - < goal.txt`).
    Exit codes as for `run`: 0 completed, 1 failed or timed out, 3 rejected, denied, expired
    or cancelled, and 4 at once when the goal is held for a person (it says how to review it).
    """
    from plangate import telemetry
    from plangate.client import Client
    from schemas.goal_states import WAITING_FOR_PERSON

    settings = load_settings()
    require_shared_broker(settings, "submitting")
    quiet_relay()
    with telemetry.flushing(), Client(settings) as client:
        handle = client.submit(goal_text(goal), metadata=_metadata(meta or []), idempotency_key=key)
        if handle.duplicate and key is not None:  # stdout stays the goal: scripts read it
            err_console.print(
                escape(f"goal {handle.goal_id} was already submitted with the key {quoted(key)}")
                + "; this is that goal"
            )
        if handle.queued:
            warn_broker_unreachable(f"goal {handle.goal_id} is stored")
        if not wait:
            if not as_json:  # stdout is the id alone: `GOAL=$(plangate submit ...)`
                typer.echo(handle.goal_id)
            _print(handle.status(), as_json, aside=True)
            return
        try:
            final = _wait(handle, timeout, QUEUED_HINTS if handle.queued else STUCK_HINTS)
        except TimeoutError as exc:
            err_console.print(
                f"[red]error:[/] {exc}; `plangate status {handle.goal_id}` follows it"
            )
            raise typer.Exit(EXIT_FAILED) from exc
        except KeyboardInterrupt:
            # Only the waiting stops: said, or the user submitted it again (a second goal).
            err_console.print(
                f"\ninterrupted: only the waiting stopped; goal {handle.goal_id} goes on "
                f"(`plangate status {handle.goal_id}` follows it, `plangate goals cancel` "
                "stops it)",
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
        _print(final if as_json else _settled_through(final, settings), as_json)
        if final.status in WAITING_FOR_PERSON:
            err_console.print(_review_hint(final, settings.server_url), highlight=False)
            raise typer.Exit(EXIT_HELD)
        raise typer.Exit(_exit_code(final.status))


def _wait(handle: GoalHandle, timeout: float, hints: Mapping[str, str]) -> GoalStatus:
    """Wait for the goal to end or to need a person; say early where it is stuck (`hints`)."""
    from schemas.goal_states import TERMINAL, WAITING_FOR_PERSON

    until = TERMINAL | WAITING_FOR_PERSON
    started = time.monotonic()
    deadline = started + timeout
    said: set[str] = set()
    status, since = "submitted", started  # a hint needs the whole interval in one status
    while True:
        left = deadline - time.monotonic()
        look = LOOK_EVERY_SECONDS
        if status in hints and status not in said:  # look again when a hint is due
            look = min(look, max(0.0, since + UNTAKEN_HINT_SECONDS - time.monotonic()))
        try:
            return handle.wait(max(0.0, min(left, look)), until=until)
        except TimeoutError:
            now, current = time.monotonic(), handle.status()
            if left <= look:  # said of the whole wait, not of its rest
                raise TimeoutError(
                    f"goal {handle.goal_id} is still {current.status} after {timeout:g} s"
                ) from None
        if current.status != status:
            status, since = current.status, now
        if status in hints and status not in said and now - since >= UNTAKEN_HINT_SECONDS:
            said.add(status)
            hint = f"{_unoffered(current.unoffered)}." if current.unoffered else hints[status]
            err_console.print(
                f"goal {handle.goal_id} is still {status} after {int(now - started)} s: "
                f"{hint} Waiting on.",
                highlight=False,
            )


def _unoffered(tools: tuple[str, ...]) -> str:
    """Say that no running executor offers `tools` (not the signing key: it is not that)."""
    return (
        f"no running executor has offered the tools {', '.join(tools)} lately (`plangate "
        "tools list`): executors hand the plan on, then fail it. Start one whose "
        "PLANGATE_TOOLS offer them (renamed? `plangate goals retry` plans it again)"
    )


LOOK_EVERY_SECONDS = 1.0
# Where a goal that does not move is usually stuck, and what to look at.
STUCK_HINTS = {
    "submitted": "no planner has planned it yet. Are the workers running (`plangate worker "
    "planner|gate|executor`, on this broker and store)? A planner waiting on its model server "
    "takes up to PLANGATE_PLANNER_TIMEOUT_SECONDS a try.",
    "approved": "no executor has started it. Is one running, does it offer the plan's tools "
    "(its log says when it lacks one or offers another version: `plangate tools list`), and "
    "does it trust the gate's signing key (its public key in the executor's "
    "PLANGATE_TRUSTED_KEYS_DIR)? `plangate dlq list` shows approvals an executor refused.",
}
# A goal the broker did not take when it was submitted waits in the outbox, not for a planner.
QUEUED_HINTS = STUCK_HINTS | {
    "submitted": "the broker did not take it (the warning above says why); it waits in the "
    "outbox, and a running worker sends it on once the broker takes messages again.",
}


@friendly_errors
def status(
    goal_id: Annotated[str, typer.Argument(metavar="GOAL_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show where a goal stands: state, plan, decision, each step's output and time, trace id."""
    from plangate.client import Client
    from plangate.run_marks import run_state

    settings = load_settings()
    with Client(settings) as client:
        current = client.status(goal_id)
        # A goal of `plangate run`: no deployment's executor comes back to its writes.
        run = (
            run_state(settings.data_dir, current.goal_id) if settings.store_in_data_folder else None
        )
        _print(current if as_json else _settled_through(current, settings), as_json, run=run)
