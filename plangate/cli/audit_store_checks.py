"""What `plangate audit` checks of the store before it says the log holds, or signs it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from plangate.cli.common import EXIT_FAILED, err_console
from plangate.errors import AuditBroken, ConfigError
from plangate.printable import printable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from plangate.config import Settings
    from plangate.signing import Signer, TrustedKeys
    from plangate.store import Store
    from plangate.store.audit import AuditReport


def checked_store(
    store: Store, data_dir: Path, trusted: TrustedKeys, refused: str = ""
) -> AuditReport:
    """Check the store's chains, checkpoints and records; at the first break say it and exit 1.

    `refused` is said after a break: what was not done because of it.
    """
    from plangate.store import audit, audit_records

    try:
        report = audit.verify(store, keys=trusted if len(trusted) else None)
    except (ValueError, TypeError, LookupError) as exc:
        # A value of a type plangate never writes there (text in a number column, a signature
        # that is not JSON): the rows were changed outside plangate.
        said = f"{type(exc).__name__}: {exc}"
        err_console.print(
            "[red]audit log broken[/]: a row holds what plangate never writes "
            f"({escape(printable(said[:200]))}); it was changed outside plangate"
        )
        _say(refused)
        raise typer.Exit(EXIT_FAILED) from None
    if report.ok and report.checkpoints and not len(trusted):
        # Not a break: with no key, what sealed the chains cannot be told from a forgery.
        raise ConfigError(
            f"the chains hold, but the {report.checkpoints} checkpoints' signatures cannot be "
            "checked without the gate's public key: set PLANGATE_TRUSTED_KEYS_DIR to the "
            "folder that holds it, or pass --key FILE"
        )
    if not report.ok:
        seq = report.broken_at
        where = "at" if seq is None else f"at entry {seq}{audit.placed(store, seq)}"
        err_console.print(f"[red]audit log broken[/] {escape(f'{where}: {report.problem}')}")
        _say(refused)
        raise typer.Exit(EXIT_FAILED)
    # Before the records: a checkpoint this gate's folder saw is gone means the log does not
    # hold, and "records broken: the audit log holds, but ..." said otherwise.
    check_memory(store, data_dir, refused)
    disagreement = audit_records.disagreement(store)
    if disagreement is not None:
        err_console.print(
            "[red]records broken[/]: the audit log holds, but what `status` and the review "
            f"show disagrees with it: {escape(printable(disagreement))}"
        )
        _say(refused)
        raise typer.Exit(EXIT_FAILED)
    if report.unchecked is not None:
        # Last: every other check held. Exit 2, as for an export whose signer is unknown.
        raise ConfigError(f"the chains and records hold, but {report.unchecked}")
    return report


def refuse_a_rotated_folder_key(settings: Settings, signer: Signer, session: Session) -> None:
    """ConfigError if `signer` is the data folder's first key and the gate has moved on."""
    if settings.signing_key_file is None:  # the key the gate made in its folder at first
        from plangate.store.audit_checkpoints import refuse_a_rotated_key

        refuse_a_rotated_key(session, signer.key_id, str(settings.data_dir / "keys"))


def _say(line: str) -> None:
    if line:
        err_console.print(escape(line), highlight=False)


def check_memory(store: Store, data_dir: Path, refused: str = "") -> None:
    """Fail if a checkpoint this data folder's sealer saw is gone (run in a gate's folder)."""
    from plangate.checkpoint_memory import CheckpointMemory

    try:
        with store.reading() as session:
            CheckpointMemory(data_dir).check(session)
    except AuditBroken as exc:
        err_console.print(f"[red]audit log broken[/]: {escape(str(exc))}")
        _say(refused)
        raise typer.Exit(EXIT_FAILED) from None
