"""`plangate audit`: the hash-chained audit log."""

from __future__ import annotations

import csv
import errno
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TextIO

import typer
from rich.markup import escape

from plangate.cli.audit_store_checks import checked_store, refuse_a_rotated_folder_key
from plangate.cli.common import EXIT_FAILED, err_console, friendly_errors, group, load_settings
from plangate.errors import AuditBroken, NotFound, quoted

if TYPE_CHECKING:
    from plangate.signing import TrustedKeys
    from plangate.store import Store

app = group("Check and export the hash-chained audit log.")


@app.command("verify", short_help="Check the audit log's hash chain, or a signed export.")
@friendly_errors
def audit_verify(
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Check this signed export offline (its manifest, FILE.dsse.json, beside it).",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="The signed manifest, if not beside the export."),
    ] = None,
    keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--key",
            metavar="PEM",
            help="A public key to trust (repeatable); default: the trusted keys folder.",
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            metavar="FILE",
            help="Also check that the store still holds every entry of this earlier signed "
            "export, unchanged (kept away from the database, it finds a goal removed whole "
            "together with its checkpoints).",
        ),
    ] = None,
) -> None:
    """Check every link of the audit log's hash chains; exit 1 at the first broken one.

    Each goal's entries form a chain; the checkpoints the gate writes seal every chain's head,
    so a goal removed whole is found too, unless every checkpoint went with it: --against an
    earlier signed export, kept away from the database, finds that. Signed checkpoints are
    checked against the trusted keys (--key, or the trusted keys folder).

    With --export, check a file written by `plangate audit export --sign` instead, offline:
    the manifest's signature (by a trusted key), the file's SHA-256, and every entry's hash.
    With --against, check such a file first, then the store, then that the store still holds
    each of the file's entries.
    """
    if export is not None and against is not None:
        raise typer.BadParameter("give --export (the file alone) or --against (the store too)")
    if export is not None:
        _verify_export(export, manifest, keys or [])
        return
    if against is not None:  # the file is trusted only once its signature and hashes hold
        _verify_export(against, manifest, keys or [])
    from plangate.store import open_store

    settings = load_settings()
    store = open_store(settings.resolved_database_url(), upgrade=False)  # checked as it is
    report = checked_store(store, settings.data_dir, _trusted(keys or []))
    # Checked before "intact" is said: it printed intact, then broken, in one run.
    anchored = None if against is None else _check_against(store, against)
    count = report.checkpoints
    sealed = f", sealed by {count} checkpoint{'s' * (count != 1)}" if count else ""
    chains = f"{report.chains} chain{'s' * (report.chains != 1)}"
    typer.echo(f"audit log intact: {report.entries} entries in {chains}{sealed}")
    if report.entries and not report.checkpoints and against is None:
        # Said, not failed: a log younger than the gate's first checkpoint has none yet.
        err_console.print(
            "[yellow]warning:[/] no checkpoint seals these chains, so entries removed from the "
            "end of a chain, or a goal removed whole, would not show: the gate writes one "
            "every PLANGATE_AUDIT_CHECKPOINT_SECONDS; if it has run longer, they were deleted. "
            "Check against a signed export kept elsewhere (--against FILE)",
            highlight=False,
        )
    _warn_of_unsealed(store, settings.audit_checkpoint_seconds)
    if anchored is not None:
        typer.echo(anchored)


def _warn_of_unsealed(store: Store, interval: float) -> None:
    """Say so when entries were written well after the newest checkpoint.

    Deleting the newest checkpoints leaves no trace but this gap, and unseals what they sealed.
    """
    from datetime import timedelta

    from plangate.store import audit_checkpoints
    from schemas import utcnow

    gap = audit_checkpoints.unsealed(store)
    if gap is None or not gap.entries or utcnow() - gap.since <= timedelta(seconds=2 * interval):
        return
    err_console.print(
        f"[yellow]warning:[/] {gap.entries} entries were written after the newest checkpoint "
        f"({gap.since:%Y-%m-%d %H:%M:%S} UTC), and none seals them yet: the gate writes one "
        f"every {interval:g} s (PLANGATE_AUDIT_CHECKPOINT_SECONDS) while it runs; if it ran "
        "since, newer checkpoints were deleted. Check against a signed export kept elsewhere "
        "(--against FILE)",
        highlight=False,
    )


@app.command("checkpoint", short_help="Seal every audit chain's head now (the gate does it too).")
@friendly_errors
def audit_checkpoint(
    accept_missing: Annotated[
        bool,
        typer.Option(
            "--accept-missing",
            help="Seal again although a checkpoint this data folder saw is gone from the store "
            "(after you checked the log against a signed export, or restored a backup).",
        ),
    ] = False,
) -> None:
    """Write a checkpoint over every audit chain's head, signed with the gate's key.

    Gate workers write one every PLANGATE_AUDIT_CHECKPOINT_SECONDS when anything moved; run
    this where the gate's key is, e.g. before an export or a backup. Like a gate, it seals
    nothing when a checkpoint its data folder saw is gone from the store (deleted, or the
    database restored from a backup) unless told --accept-missing.
    """
    from plangate.checkpoint_memory import CheckpointMemory
    from plangate.signing import load_signer
    from plangate.store import audit_checkpoints, open_store

    settings = load_settings()
    signer = load_signer(settings)
    memory = CheckpointMemory(settings.data_dir)
    if accept_missing and memory.forget():
        err_console.print(f"forgot the checkpoint {memory.path} remembered; sealing afresh")
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            memory.check(session)
            refuse_a_rotated_folder_key(settings, signer, session)
            written = audit_checkpoints.write(session, signer)
            said = (
                f"checkpoint {written.id}: {written.chains} chains, {written.entries} entries"
                if written is not None
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
    goal: Annotated[str | None, typer.Option(metavar="GOAL_ID", help="Only this goal.")] = None,
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
    """Export every audit entry in chain order, with its hash and its predecessor's.

    `plangate audit verify` checks the chain; an exported file keeps the hashes, so an auditor
    can check it again elsewhere. With --sign (and --output), a DSSE envelope over the
    export's range, count, first and last hashes and SHA-256 is written next to it, signed by
    the gate's key: `plangate audit verify --export FILE` checks it with the public key alone.
    Before it signs, the store is verified as `plangate audit verify` does (exit 1 if broken).
    """
    from plangate.audit_export import ExportSummary, sign_export
    from plangate.export_records import records_path, write_records
    from plangate.signing import TrustedKeys, load_signer
    from plangate.store import audit, open_store
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
        trusted = TrustedKeys([*_trusted([]).values(), signer.public_key])
        refused = "nothing exported: signed, it would vouch for a log that does not verify"
        with store.reading() as session:
            refuse_a_rotated_folder_key(settings, signer, session)
        checked_store(store, settings.data_dir, trusted, refused)
    goal = _whole_goal_id(store, goal)
    summary = ExportSummary()
    entries = summary.counted(audit.export(store, since=after, goal_id=goal, until=before))
    with _replacing(output) if output else _stdout() as stream:
        if output_format == "csv":
            writer = csv.DictWriter(stream, fieldnames=audit.EXPORT_FIELDS)
            writer.writeheader()
            for entry in entries:
                writer.writerow({**entry, "data": json.dumps(entry["data"], sort_keys=True)})
        else:
            for entry in entries:
                stream.write(json.dumps(entry, sort_keys=True) + "\n")
        if goal is not None and summary.count == 0:  # raised in here: no file is put in place
            raise NotFound(
                f"no audit entry of goal {quoted(goal)}; check the id "
                "(`plangate goals list` shows goals)"
            )
    beside = None
    if records and output is not None:
        beside = records_path(output)
        count = write_records(store, summary.recorded, beside)
        err_console.print(escape(f"{count} plans and step results written to {beside}"))
    store.close()
    if signer is not None and output is not None:
        when = after.isoformat() if after is not None else None
        end = before.isoformat() if before is not None else None
        scope = {"format": output_format, "since": when, "until": end, "goal": goal}
        signed = sign_export(output, summary, signer, scope, beside)
        said = f"{summary.count} entries written to {output}; signed manifest {signed}"
        err_console.print(escape(said))
    elif output is not None:  # a file written without a word looked like nothing happened
        err_console.print(escape(f"{summary.count} entries written to {output}"))


def _whole_goal_id(store: Store, goal: str | None) -> str | None:
    """Return the whole id of a goal named by a short one (as every command takes them)."""
    from plangate.store.goals import get_goal

    if goal is None:
        return None
    with store.reading() as session:
        try:
            return get_goal(session, goal, typed=True).id
        except NotFound:  # its row gone (a goal's entries outlive it): exported by the id given
            return goal


def _verify_export(export: Path, manifest: Path | None, key_files: list[Path]) -> None:
    from plangate.audit_export import verify_export

    if not export.is_file():
        raise typer.BadParameter(f"{export} is no file; name an export written with --sign")
    report = verify_export(export, _trusted(key_files), manifest)
    if report.ok:
        part = "" if report.part is None else f" (a part of the log: {report.part})"
        typer.echo(f"export intact: {report.entries} entries{part}, signed by {report.key_id}")
        return
    err_console.print(f"[red]export not verified[/]: {escape(str(report.problem))}")
    raise typer.Exit(EXIT_FAILED)


def _check_against(store: Store, export: Path) -> str:
    """Fail if the store lacks an entry of the export; else return what to say of it."""
    from plangate.audit_anchor import missing_from

    count, missing = missing_from(store, export)
    if missing is not None:
        err_console.print(f"[red]audit log broken[/]: {escape(missing)}")
        raise typer.Exit(EXIT_FAILED)
    return f"the store holds all {count} entries of {export.name}, unchanged"


def _trusted(key_files: list[Path]) -> TrustedKeys:
    from plangate.signing import TrustedKeys, load_trusted_keys, read_public_key

    if key_files:
        return TrustedKeys([read_public_key(path) for path in key_files])
    return load_trusted_keys(load_settings())


@contextmanager
def _stdout() -> Iterator[TextIO]:
    yield sys.stdout
    sys.stdout.flush()


@contextmanager
def _replacing(output: Path) -> Iterator[TextIO]:
    """Write beside `output`, then put it in place: an export that failed midway is no file.

    (An auditor given a file must be able to take it as the whole export asked for.)
    """
    if output.is_dir():  # else the error would name the partial file, not the path given
        raise IsADirectoryError(errno.EISDIR, "it is a folder; give a file's path", str(output))
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("w", newline="", encoding="utf-8") as stream:
            yield stream
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
