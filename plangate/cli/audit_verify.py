"""`plangate audit verify`: check the audit log's chains and records, or a signed export.

Said for people by default; with `--json`, one object on stdout, for the monitor that runs it
on a schedule (its exit code too: 0 intact, 1 broken, 2 a check that could not be made).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from plangate.cli.audit_store_checks import Broken, check_store, say_broken, trusted_keys
from plangate.cli.common import EXIT_FAILED, EXIT_USAGE, err_console, load_settings
from plangate.errors import ConfigError

if TYPE_CHECKING:
    from plangate.store import Store


@dataclass
class Verdict:
    """What `audit verify --json` prints: the verdict, what was checked, and what to look at."""

    verdict: Literal["intact", "broken", "cannot_check"] = "intact"
    problem: str | None = None
    entries: int | None = None  # None: not counted (a break found first)
    chains: int | None = None
    checkpoints: int | None = None
    signed_by: str | None = None  # an export's signer
    part: str | None = None  # what of the log an export holds, if not all of it
    records: int | None = None  # the records checked with an export, if it has some
    records_file: str | None = None  # the file they were read from
    against: str | None = None  # the earlier export the store was checked against
    against_entries: int | None = None  # how many entries that export holds (signed_by's)
    warnings: list[str] = field(default_factory=list)


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
    records: Annotated[
        Path | None,
        typer.Option(
            "--records",
            metavar="FILE",
            help="The records signed with the export, if not beside it (FILE.records.jsonl).",
        ),
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
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (verdict: intact, broken or cannot_check; problem; "
            "entries; warnings), for a monitor; the exit code is the same.",
        ),
    ] = False,
) -> None:
    """Check every link of the audit log's hash chains; exit 1 at the first broken one.

    Each goal's entries form a chain; the checkpoints the gate writes seal every chain's head,
    so a goal removed whole is found too, unless every checkpoint went with it: --against an
    earlier signed export, kept away from the database, finds that. Signed checkpoints are
    checked against the trusted keys (--key, or the trusted keys folder).

    With --export, check a file written by `plangate audit export --sign` instead, offline:
    the manifest's signature (by a trusted key), the file's SHA-256, and every entry's hash;
    records signed with it are looked for beside it under the name signed or the export's own
    (FILE.records.jsonl), or given with --records.
    With --against, check such a file first, then the store, then that the store still holds
    each of the file's entries. Exit 2 when a check cannot be made (no key for a signer).
    """
    found = Verdict()
    try:
        if export is not None and against is not None:
            raise ConfigError("give --export (the file alone) or --against (the store too)")
        given = (manifest, records, keys or [])
        _verify(found, export, given, against, show_progress=not as_json)
    except Broken as broken:
        if not as_json:
            say_broken(broken, _next_step(broken, against))
        found.verdict, found.problem = "broken", str(broken)
    except ConfigError as exc:  # a check not made: said by friendly_errors without --json
        if not as_json:
            raise
        found.verdict, found.problem = "cannot_check", str(exc)
    if as_json:
        typer.echo(json.dumps(_shown(found, export)))
        codes = {"intact": 0, "broken": EXIT_FAILED, "cannot_check": EXIT_USAGE}
        raise typer.Exit(codes[found.verdict])
    for line in _said(found):
        typer.echo(line)
    for warning in found.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _shown(found: Verdict, export: Path | None) -> dict[str, object]:
    """Return what `--json` prints: of an export, none of the store's chains and checkpoints."""
    shown = asdict(found)
    if export is not None:  # it has neither: `null` read as "none found"
        del shown["chains"], shown["checkpoints"]
    return shown


def _next_step(broken: Broken, against: Path | None) -> str:
    """Say what a person does about a break: where to look next, and what to restore."""
    if broken.what == "export not verified":
        return (
            "what to do: this file is not as it was signed; do not rely on it, and get the "
            "export again from whoever signed it"
        )
    if against is not None:
        return (
            "what to do: restore the store from a backup taken before the change, and find "
            "who had write access to the database since the export"
        )
    return (
        "what to do: `plangate audit verify --against FILE` with your last signed export "
        "names the first of its entries changed or removed since; restore from a backup, and "
        "find who had write access to the database (docs: how-to/operate.md, the audit log)"
    )


# What was given to check a signed export with: its manifest, its records, the keys to trust.
_Given = tuple[Path | None, Path | None, list[Path]]


def _verify(
    found: Verdict,
    export: Path | None,
    given: _Given,
    against: Path | None,
    *,
    show_progress: bool,
) -> None:
    """Check what was asked, filling in `found`; Broken at the first break."""
    keys = given[2]
    if export is not None:
        _verify_export(found, export, given)
        return
    if against is not None:  # the file is trusted only once its signature and hashes hold
        checked = Verdict()
        _verify_export(checked, against, given)
        found.signed_by, found.part = checked.signed_by, checked.part
        found.against_entries = checked.entries
        found.records, found.records_file = checked.records, checked.records_file
    from plangate.store import open_store

    settings = load_settings()
    store = open_store(settings.resolved_database_url(), upgrade=False)  # checked as it is
    try:
        report = check_store(
            store, settings.data_dir, trusted_keys(keys), show_progress=show_progress
        )
    except Broken:
        # The export says which of its entries changed, where the store's own check saw only
        # the chain's head no longer as sealed (the next step a break tells a person to take).
        if against is not None:
            _check_against(store, against)
        raise
    # Checked before "intact" is said: it printed intact, then broken, in one run.
    if against is not None:
        found.against = _check_against(store, against)
    found.entries, found.chains = report.entries, report.chains
    found.checkpoints = report.checkpoints
    if report.entries and not report.checkpoints and against is None:
        # Said, not failed: a log younger than the gate's first checkpoint has none yet.
        found.warnings.append(
            "no checkpoint seals these chains, so entries removed from the end of a chain, or "
            "a goal removed whole, would not show: the gate writes one every "
            "PLANGATE_AUDIT_CHECKPOINT_SECONDS; if it has run longer, they were deleted. Check "
            "against a signed export kept elsewhere (--against FILE)"
        )
    unsealed = _unsealed(store, settings.audit_checkpoint_seconds)
    if unsealed is not None:
        found.warnings.append(unsealed)


def _said(found: Verdict) -> list[str]:
    """Return what people are told of a log or an export found intact."""
    if found.chains is None:  # an export
        return [_export_intact(found, found.entries)]
    count, chains = found.checkpoints or 0, found.chains
    sealed = f", sealed by {count} checkpoint{'s' * (count != 1)}" if count else ""
    said = [f"audit log intact: {found.entries} entries in {chains} chain{'s' * (chains != 1)}"]
    said[0] += sealed
    if found.against is None:
        return said
    # The export checked first, and by whose key, as `--export` says it (it went unsaid).
    return [_export_intact(found, found.against_entries), *said, found.against]


def _export_intact(found: Verdict, entries: int | None) -> str:
    """Say an export was found intact: its entries, its part of the log, signer and records."""
    part = "" if found.part is None else f" (a part of the log: {found.part})"
    said = f"export intact: {entries} entries{part}, signed by {found.signed_by}"
    if found.records is None:
        return said
    plural = "s" * (found.records != 1)
    return f"{said}; its {found.records} record{plural} ({found.records_file}) checked too"


def _unsealed(store: Store, interval: float) -> str | None:
    """Say so when entries were written well after the newest checkpoint.

    Deleting the newest checkpoints leaves no trace but this gap, and unseals what they sealed.
    """
    from datetime import timedelta

    from plangate.store import audit_checkpoints
    from schemas import utcnow

    gap = audit_checkpoints.unsealed(store)
    if gap is None or not gap.entries or utcnow() - gap.since <= timedelta(seconds=2 * interval):
        return None
    return (
        f"{gap.entries} entries were written after the newest checkpoint "
        f"({gap.since:%Y-%m-%d %H:%M:%S} UTC), and none seals them yet: the gate writes one "
        f"every {interval:g} s (PLANGATE_AUDIT_CHECKPOINT_SECONDS) while it runs; if it ran "
        "since, newer checkpoints were deleted. Check against a signed export kept elsewhere "
        "(--against FILE)"
    )


def _verify_export(found: Verdict, export: Path, given: _Given) -> None:
    from plangate.audit_export import verify_export

    if not export.is_file():
        raise ConfigError(f"{export} is no file; name an export written with --sign")
    manifest, records, keys = given
    report = verify_export(export, trusted_keys(keys), manifest, records)
    if not report.ok:
        raise Broken("export not verified", str(report.problem))
    found.entries, found.signed_by, found.part = report.entries, report.key_id, report.part
    found.records = report.record_count
    found.records_file = report.records.name if report.records is not None else None


def _check_against(store: Store, export: Path) -> str:
    """Raise Broken if the store lacks an entry of the export; else return what to say of it."""
    from plangate.audit_anchor import missing_from

    count, missing = missing_from(store, export)
    if missing is not None:
        raise Broken("audit log broken", missing)
    return f"the store holds all {count} entries of {export.name}, unchanged"
