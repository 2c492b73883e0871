"""`plangate audit`: the hash-chained audit log."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TextIO

import typer
from rich.markup import escape

from plangate.cli.audit_store_checks import (
    checked_store,
    refuse_a_rotated_folder_key,
    trusted_keys,
)
from plangate.cli.audit_verify import audit_verify
from plangate.cli.common import EXIT_FAILED, err_console, friendly_errors, group, load_settings
from plangate.cli.progress import Progress, counted
from plangate.errors import AuditBroken, NotFound, quoted

if TYPE_CHECKING:
    from plangate.store import Store

app = group("Check and export the hash-chained audit log.")


app.command("verify", short_help="Check the audit log's hash chain, or a signed export.")(
    friendly_errors(audit_verify)
)


@app.command("checkpoint", short_help="Seal every audit chain's head now (the gate does it too).")
@friendly_errors
def audit_checkpoint(
    accept_missing: Annotated[
        bool,
        typer.Option(
            "--accept-missing",
            help="Seal again although a checkpoint this data folder saw is gone from the store, "
            "or a chain no longer holds the head sealed before (after you checked the log "
            "against a signed export, or restored a backup).",
        ),
    ] = False,
) -> None:
    """Write a checkpoint over every audit chain's head, signed with the gate's key.

    Gate workers write one every PLANGATE_AUDIT_CHECKPOINT_SECONDS when anything moved; run
    this where the gate's key is, e.g. before an export or a backup. Like a gate, it seals
    nothing when a checkpoint its data folder saw is gone from the store (deleted, or the
    database restored from a backup), and no chain that no longer holds the head sealed
    before (exit 1, the rest sealed), unless told --accept-missing.
    """
    from plangate.checkpoint_memory import CheckpointMemory
    from plangate.signing_keys import load_signer, load_trusted_keys
    from plangate.store import audit_checkpoints, open_store

    settings = load_settings()
    signer = load_signer(settings)
    memory = CheckpointMemory(settings.data_dir)
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            if accept_missing and (forgotten := memory.forget(session)) is not None:
                err_console.print(f"forgot the checkpoint {forgotten} remembered; sealing afresh")
            memory.check(session)
            refuse_a_rotated_folder_key(settings, signer, session)
            trusted = load_trusted_keys(settings)
            sealing = audit_checkpoints.write(
                session, signer, trusted=trusted, accept_rewritten=accept_missing
            )
            written = sealing.checkpoint
            said = (
                f"checkpoint {written.id}: {written.chains} chain{'s' * (written.chains != 1)}, "
                f"{written.entries} entries"
                if written is not None
                else "no checkpoint written: nothing else moved since the last"
                if sealing.refused
                else "nothing moved since the last checkpoint; none written"
            )
        with store.reading() as session:
            memory.remember_newest(session)
    except AuditBroken as exc:
        err_console.print(f"[red]audit log broken[/]: {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        store.close()
    typer.echo(said)
    for refused in sealing.refused:
        err_console.print(f"[red]not sealed[/]: {escape(refused)}", highlight=False)
    if sealing.refused:
        raise typer.Exit(EXIT_FAILED)


@app.command("export", short_help="Write the audit log as JSON lines or CSV.")
@friendly_errors
def audit_export(
    output_format: Annotated[
        Literal["jsonl", "csv"], typer.Option("--format", help="jsonl (one entry a line) or csv.")
    ] = "jsonl",
    since: Annotated[
        str | None,
        typer.Option(
            metavar="AGE|TIME",
            help="Only entries since: an age (2h, 7d) or an ISO 8601 time (UTC if it names none).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="AGE|TIME",
            help="Only entries before: an age (2h, 7d) or an ISO 8601 time (a quarter's end).",
        ),
    ] = None,
    goal: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GOAL_ID",
            help="Only this goal's entries (repeatable: every goal given, in log order).",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write here, not stdout.")
    ] = None,
    sign: Annotated[
        bool,
        typer.Option(
            "--sign", help="Also write FILE.dsse.json: a manifest signed with the gate's key."
        ),
    ] = False,
    records: Annotated[
        bool,
        typer.Option(
            "--records",
            help="Also write FILE.records.jsonl: each exported goal's plans (steps and "
            "arguments) and step results (outputs), checked against the entries by verify.",
        ),
    ] = False,
) -> None:
    """Export every audit entry in the order written, with its hash and its predecessor's.

    The order written is the log's (each entry's `seq`): the goals' chains are interleaved;
    each entry names its chain and its place in it, by which `verify` follows each chain.

    `plangate audit verify` checks the chain; an exported file keeps the hashes, so an auditor
    can check it again elsewhere. With --sign (and --output), a DSSE envelope over the
    export's range, count, first and last hashes and SHA-256 is written next to it, signed by
    the gate's key: `plangate audit verify --export FILE` checks it with the public key alone.
    Before it signs, the store is verified as `plangate audit verify` does (exit 1 if broken).
    """
    from plangate.audit_export import ExportSummary, sign_export
    from plangate.export_file import write_entries
    from plangate.export_records import records_path, write_records
    from plangate.signing import TrustedKeys
    from plangate.signing_keys import load_signer
    from plangate.store import audit_entries, open_store
    from plangate.store.goal_list import check_window, parse_since

    if (sign or records) and output is None:
        given = "--sign" if sign else "--records"
        raise typer.BadParameter(f"{given} needs --output FILE: it is written beside it")
    after = parse_since(since) if since is not None else None  # as `goals list --since`
    before = parse_since(until, "until") if until is not None else None
    check_window(after, before)
    settings = load_settings()
    signer = load_signer(settings) if sign else None  # refused before anything is written
    store = open_store(settings.resolved_database_url(), upgrade=False)
    if signer is not None:
        # The gate's key vouches for what it signs: a log that does not verify is not signed.
        trusted = TrustedKeys([*trusted_keys([]).values(), signer.public_key])
        refused = "nothing exported: signed, it would vouch for a log that does not verify"
        with store.reading() as session:
            refuse_a_rotated_folder_key(settings, signer, session)
        checked_store(store, settings.data_dir, trusted, refused)
    goals = _whole_goal_ids(store, goal)
    # Before a line is written: to stdout, a mistyped id of several left the others' entries,
    # an export that looked whole, in whatever the output was redirected to.
    _refuse_unlogged(audit_entries.goals_unlogged(store, goals) if goals else [])
    summary = ExportSummary()
    chosen = audit_entries.export(store, since=after, goal_ids=goals, until=before)
    entries = summary.counted(chosen)
    # Said only where the entries go to a file: on a terminal it would cut through them.
    told = Progress(err_console, "exporting", "entries", enabled=output is not None)
    entries = counted(entries, told)
    with told, _replacing(output) if output else _stdout() as stream:
        write_entries(stream, entries, output_format)
        # Raised in here, so no file is put in place: a goal with no entry in the window.
        _refuse_unlogged([one for one in goals or [] if one not in summary.recorded])
    beside = None
    if records and output is not None:
        beside = records_path(output)
        count = write_records(store, summary.recorded, beside)
        err_console.print(escape(f"{count} plans and step results written to {beside}"))
    store.close()
    if signer is not None and output is not None:
        when = after.isoformat() if after is not None else None
        end = before.isoformat() if before is not None else None
        # One goal stays a string, as manifests always said it; several are a list.
        named = goals[0] if goals is not None and len(goals) == 1 else goals
        scope = {"format": output_format, "since": when, "until": end, "goal": named}
        signed = sign_export(output, summary, signer, scope, beside)
        said = f"{summary.count} entries written to {output}; signed manifest {signed}"
        err_console.print(escape(said))
    elif output is not None:  # a file written without a word looked like nothing happened
        err_console.print(escape(f"{summary.count} entries written to {output}"))


def _refuse_unlogged(goals: list[str]) -> None:
    if goals:
        raise NotFound(
            f"no audit entry of goal {quoted(goals[0])}; check the id "
            "(`plangate goals list` shows goals)"
        )


def _whole_goal_ids(store: Store, goals: list[str] | None) -> list[str] | None:
    """Return the whole ids of goals named by short ones (as every command takes them), once."""
    from plangate.store.goals import get_goal

    if not goals:
        return None
    whole: dict[str, None] = {}
    with store.reading() as session:
        for goal in goals:
            try:
                whole[get_goal(session, goal, typed=True).id] = None
            except NotFound:  # its row gone (a goal's entries outlive it): exported by the id given
                whole[goal] = None
    return list(whole)


@contextmanager
def _stdout() -> Iterator[TextIO]:
    yield sys.stdout
    sys.stdout.flush()


def _private(name: str, flags: int) -> int:
    return os.open(name, flags, 0o600)


@contextmanager
def _replacing(output: Path) -> Iterator[TextIO]:
    """Write beside `output`, then put it in place: an export that failed midway is no file.

    (An auditor given a file must be able to take it as the whole export asked for.)
    """
    if output.is_dir():  # else the error would name the partial file, not the path given
        raise IsADirectoryError(errno.EISDIR, "it is a folder; give a file's path", str(output))
    if not output.parent.is_dir():  # likewise: it named `.a.jsonl.partial`, never given
        raise FileNotFoundError(errno.ENOENT, "its folder does not exist", str(output))
    partial = output.with_name(f".{output.name}.partial")
    try:
        # Only its owner may read it, as the store: entries and records hold goals' texts,
        # arguments and outputs (it was world-readable under the usual umask).
        with open(partial, "w", newline="", encoding="utf-8", opener=_private) as stream:
            yield stream
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
