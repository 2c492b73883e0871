"""`plangate policy show`: the text of a policy version, as the audit log recorded it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from plangate.cli.common import EXIT_FAILED, err_console, load_settings
from plangate.errors import Conflict, NotFound, quoted
from plangate.printable import printable, printable_line
from plangate.redaction import REDACTED

if TYPE_CHECKING:
    from plangate.store.audit_policies import RecordedPolicy

_SHORTEST = 8  # digits of a version given short, as other ids are printed


def policy_show(
    version: Annotated[
        str,
        typer.Argument(
            metavar="VERSION", help="The version a decision records (sha256:…), or its digits."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the text here byte for byte (`policy check FILE` then prints VERSION).",
        ),
    ] = None,
) -> None:
    """Print the policy text the gate decided under at VERSION, as its audit log recorded it.

    A gate records each version's text once, in the audit log (a `policy.adopted` entry,
    verified and exported with the rest), the first time it decides under it: months later,
    what a rule said is read here, without the file.
    """
    from plangate.store import audit_policies, open_store

    store = open_store(load_settings().resolved_database_url(), upgrade=False, create=False)
    try:
        known = audit_policies.recorded(store)
    finally:
        store.close()
    found = _under(version.removeprefix("sha256:"), known)
    if not found:
        raise NotFound(_unknown(version, known))
    policy = found[0]
    said = f"policy {policy.version}, recorded {policy.at} by {policy.actor}, read from "
    err_console.print(printable_line(said + policy.source), markup=False, highlight=False)
    if len(found) > 1:
        err_console.print(
            f"warning: {len(found)} texts are recorded under this version (the digests of "
            f"their files differ: {', '.join(other.sha256 for other in found)}); this is the "
            "first; `plangate audit export` holds each",
            markup=False,
            highlight=False,
        )
    # Redaction is the one reason plangate records another text; with no mark of it, the text
    # was changed after it was recorded (a rewrite, its chain's hashes recomputed).
    changed = not policy.as_written and REDACTED not in policy.text
    if changed:
        err_console.print(
            "error: the text recorded is not the file's (its digest was "
            f"{policy.sha256}), and it holds no redaction, so it was changed after it was "
            "recorded: treat the audit log as tampered, and check it against your last signed "
            "export (`plangate audit verify --against FILE`); shown only to be looked into"
            + ("" if output is None else f", and not written to {output}"),
            markup=False,
            highlight=False,
        )
        if output is None:  # shown to be looked into, exit 1: a script keeps nothing from it
            typer.echo(printable(policy.text.replace("\r\n", "\n")))
        raise typer.Exit(EXIT_FAILED)
    if not policy.as_written:
        err_console.print(
            "note: the text recorded is not the file's byte for byte (something in it looked "
            f"like a secret and was redacted); the file's digest was {policy.sha256}",
            markup=False,
            highlight=False,
        )
    if output is not None:
        output.write_text(policy.text, encoding="utf-8", newline="")
        err_console.print(printable_line(f"written to {output}"), markup=False, highlight=False)
        return
    # The file's text, but what a terminal would obey in it shown escaped (-o keeps it all).
    shown = printable(policy.text.replace("\r\n", "\n"))
    typer.echo(shown, nl=not shown.endswith("\n"))


def _under(digits: str, known: list[RecordedPolicy]) -> list[RecordedPolicy]:
    """Return the texts recorded under a version given whole or by its first 8+ digits."""
    found = [policy for policy in known if policy.version == f"sha256:{digits}"]
    if found or len(digits) < _SHORTEST:
        return found
    found = [policy for policy in known if policy.version.startswith(f"sha256:{digits}")]
    if len({policy.version for policy in found}) > 1:
        raise Conflict(f"{quoted(digits)} starts more than one version recorded; give more of it")
    return found


def _unknown(version: str, known: list[RecordedPolicy]) -> str:
    """Say that no text is recorded under `version`, naming those that are."""
    said = f"no policy text is recorded under version {quoted(version)}"
    if not known:
        return (
            f"{said}, nor under any: a gate records a version's text when it first decides "
            "under it (gates before this release did not); `plangate policy check FILE` "
            "prints the version of a file you kept"
        )
    versions = ", ".join(dict.fromkeys(f"{policy.version} ({policy.at})" for policy in known))
    return f"{said}; the audit log records {versions}"
