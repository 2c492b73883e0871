"""`plangate dlq`: messages that could never be handled, with their reasons."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from plangate.cli.common import (
    EXIT_USAGE,
    err_console,
    friendly_errors,
    group,
    load_settings,
)
from plangate.errors import ConfigError, quoted
from plangate.printable import printable_line

if TYPE_CHECKING:
    from plangate.bus import Bus

app = group("Inspect and replay the dead-letter queue.")


def _bus() -> Bus:
    from plangate.bus import Bus

    settings = load_settings()
    return Bus(settings.broker_url, settings.namespace)


@app.command("list", short_help="List dead letters: id, when, queue, why.")
@friendly_errors
def list_letters(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    queue: Annotated[
        str | None,
        typer.Option(
            metavar="QUEUE", help="Only the letters of this queue (e.g. plangate.planner)."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="At most the N oldest (the rest are counted)."),
    ] = None,
) -> None:
    """List the dead letters, oldest first; they stay in the queue.

    With thousands (a publisher's junk), --queue and --limit narrow the list, and `--json`
    gives the ids that `plangate dlq purge` or `replay` take.
    """
    bus = _bus()
    try:
        letters, unreadable = bus.read_dead_letters()
    finally:
        bus.close()
    if queue is not None:
        letters = [letter for letter in letters if letter.queue == queue]
    if limit is not None and len(letters) > limit:
        err_console.print(
            f"{len(letters) - limit} more dead letters are not shown (--limit {limit})"
        )
        letters = letters[:limit]
    if unreadable:  # stderr: the listing itself (and its --json) stays the letters
        err_console.print(
            f"{unreadable} more entries on the dead-letter queue are not shown: not dead "
            "letters (not written by plangate, or over 1 MiB), or past the first 100000 read; "
            "they are kept, and not purged by id"
        )
    for letter in letters:
        if as_json:
            typer.echo(letter.model_dump_json(exclude={"body_b64"}))
        else:
            when = letter.failed_at.strftime("%Y-%m-%d %H:%M:%S")
            # Its id and what is quoted in its reason are whoever published it: shown, not obeyed.
            line = f"{letter.message_id}  {when}  {letter.queue:<20} {letter.reason}"
            typer.echo(printable_line(line))
    if not letters and not unreadable and not as_json:
        typer.echo("no dead letters")


@app.command("show", short_help="Show one dead letter, with its original body.")
@friendly_errors
def show(letter_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Print a dead letter as JSON, its body as text when it is UTF-8.

    The body is never deserialised further: a pickle stays bytes.
    """
    bus = _bus()
    try:
        letters = {letter.message_id: letter for letter in bus.dead_letters()}
    finally:
        bus.close()
    letter = letters.get(_resolve(letters, letter_id) or "")
    if letter is None:
        err_console.print(
            f"[red]error:[/] {escape(quoted(letter_id))} names no dead letter, or more than "
            "one; `plangate dlq list` shows them"
        )
        raise typer.Exit(EXIT_USAGE)
    shown = letter.model_dump(mode="json")
    body = base64.b64decode(letter.body_b64)
    try:
        shown["body"] = body.decode("utf-8")
        del shown["body_b64"]
    except UnicodeDecodeError:
        pass
    typer.echo(json.dumps(shown, indent=2))


LetterIds = typer.Argument(
    metavar="ID", help="Dead letters' ids, as `plangate dlq list` shows them.", show_default=False
)


@app.command("replay", short_help="Send dead letters back to the stage that failed them.")
@friendly_errors
def replay(
    letter_ids: Annotated[list[str] | None, LetterIds] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Replay the given dead letters (or --all) once the cause is fixed."""
    _chosen(letter_ids, replay_all, "replay")
    bus = _bus()
    try:
        named = _named(bus, letter_ids or [])
        replayed = bus.replay_dead_letters(None if replay_all else list(named))
        # --all leaves some where they are (cut, or from a queue plangate does not know): say
        # so, or an operator reads the queue as empty.
        left = len(bus.read_dead_letters()[0]) if replay_all else 0
    finally:
        bus.close()
    for letter in replayed:
        typer.echo(f"replayed {letter.message_id} to {letter.queue}")
    if left:
        err_console.print(
            f"{left} dead letters are still on the queue, not replayed (from a queue plangate "
            "does not know, its body cut when it was dead-lettered or still refused as it is, "
            "or come since): `plangate dlq list` shows them, `plangate dlq show ID` each one's "
            "reason; fix such a message at its publisher, then purge it"
        )
    missing = {named[k] for k in set(named) - {letter.message_id for letter in replayed}}
    if missing:
        names = escape(", ".join(sorted(missing)))
        err_console.print(
            f"[red]error:[/] not replayed (unknown, from an unknown queue, its body cut when "
            f"it was dead-lettered, or still refused as it is: `plangate dlq show` says why; "
            f"fix such a message at its publisher, then purge it): {names}"
        )
        raise typer.Exit(EXIT_USAGE)


@app.command("purge", short_help="Remove dead letters for good (after reading them).")
@friendly_errors
def purge(
    letter_ids: Annotated[list[str] | None, LetterIds] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Remove every dead letter.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --all.")] = False,
) -> None:
    """Remove the given dead letters (or --all, after a confirmation unless --yes).

    Their goals are not touched: `plangate goals` and the audit log keep what happened.
    Unknown ids are reported (exit 2); nothing else is removed.
    """
    _chosen(letter_ids, purge_all, "purge")
    if purge_all and not yes:
        if not sys.stdin.isatty():  # nobody to answer: click would print "Aborted!", exit 1
            raise ConfigError("--all removes every dead letter for good; add --yes to confirm")
        typer.confirm("Remove every dead letter for good?", abort=True, err=True)
    bus = _bus()
    try:
        named = _named(bus, letter_ids or [])
        removed = bus.purge_dead_letters(None if purge_all else list(named))
    finally:
        bus.close()
    typer.echo(f"removed {len(removed)} dead letter{'' if len(removed) == 1 else 's'}")
    missing = {named[k] for k in set(named) - {letter.message_id for letter in removed}}
    if missing:
        names = escape(", ".join(sorted(missing)))
        err_console.print(f"[red]error:[/] no such dead letter: {names}")
        raise typer.Exit(EXIT_USAGE)


def _chosen(letter_ids: list[str] | None, every: bool, verb: str) -> None:
    """Refuse a choice that names no letter, or names some and --all (which would win)."""
    if bool(letter_ids) == every:
        raise typer.BadParameter(f"name the dead letters to {verb}, or pass --all (not both)")


def _resolve(ids: Collection[str], given: str) -> str | None:
    """Return the id of the dead letter `given` names (None if none, or several).

    In full, or, as goal and plan ids, its start of `MIN_SHORT_ID` characters or more.
    """
    from plangate.store.goals import MIN_SHORT_ID

    if given in ids:
        return given
    started = [k for k in ids if len(given) >= MIN_SHORT_ID and k.startswith(given)]
    return started[0] if len(started) == 1 else None


def _named(bus: Bus, given: list[str]) -> dict[str, str]:
    """Return each dead letter id named in `given` (an unknown one as given), with its name."""
    if not given:
        return {}
    known = {letter.message_id for letter in bus.dead_letters()}
    return {_resolve(known, name) or name: name for name in given}
