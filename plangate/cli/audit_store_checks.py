"""What `plangate audit` checks of the store before it says the log holds, or signs it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape

from plangate.cli.common import EXIT_FAILED, err_console, load_settings
from plangate.cli.progress import Progress
from plangate.errors import AuditBroken, ConfigError
from plangate.printable import printable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from plangate.config import Settings
    from plangate.signing import Signer, TrustedKeys
    from plangate.store import Store
    from plangate.store.audit import AuditReport


class Broken(Exception):
    """A check that found a break: what broke ("audit log broken", ...) and how."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"{what}: {problem}")
        self.what, self.problem = what, problem


def say_broken(broken: Broken, refused: str = "") -> NoReturn:
    """Say the break, then `refused` (what was not done because of it); exit 1."""
    err_console.print(f"[red]{escape(broken.what)}[/]: {escape(broken.problem)}", highlight=False)
    _say(refused)
    raise typer.Exit(EXIT_FAILED)


def checked_store(
    store: Store, data_dir: Path, trusted: TrustedKeys, refused: str = ""
) -> AuditReport:
    """Check the store's chains, checkpoints and records; at the first break say it and exit 1.

    `refused` is said after a break: what was not done because of it.
    """
    try:
        return check_store(store, data_dir, trusted)
    except Broken as broken:
        say_broken(broken, refused)


def check_store(
    store: Store, data_dir: Path, trusted: TrustedKeys, *, show_progress: bool = True
) -> AuditReport:
    """Check the store's chains, checkpoints and records; raise Broken at the first break.

    ConfigError where a check cannot be made (a checkpoint's signer not given). How far each
    check got is said on stderr while it runs long, unless `show_progress` is False.
    """
    from plangate.store import audit, audit_records

    keys = trusted if len(trusted) else None
    try:
        with Progress(err_console, "checking chains", "entries", enabled=show_progress) as told:
            report = audit.verify(store, keys=keys, progress=told)
    except (ValueError, TypeError, LookupError) as exc:
        # A value of a type plangate never writes there (text in a number column, a signature
        # that is not JSON): the rows were changed outside plangate.
        said = f"{type(exc).__name__}: {exc}"
        raise Broken(
            "audit log broken",
            f"a row holds what plangate never writes ({printable(said[:200])}); it was "
            "changed outside plangate",
        ) from None
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
        raise Broken(f"audit log broken {where}", str(report.problem))
    # Before the records: a checkpoint this gate's folder saw is gone means the log does not
    # hold, and "records broken: the audit log holds, but ..." said otherwise.
    check_memory(store, data_dir)
    with Progress(err_console, "checking records", "goals", enabled=show_progress) as told:
        disagreement = audit_records.disagreement(store, progress=told)
    if disagreement is not None:
        raise Broken(
            "records broken",
            "the audit log holds, but what `status` and the review show disagrees with it: "
            + printable(disagreement),
        )
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


def check_memory(store: Store, data_dir: Path) -> None:
    """Raise Broken if a checkpoint this data folder's sealer saw is gone (a gate's folder)."""
    from plangate.checkpoint_memory import CheckpointMemory

    try:
        with store.reading() as session:
            CheckpointMemory(data_dir).check(session)
    except AuditBroken as exc:
        raise Broken("audit log broken", str(exc)) from None


def trusted_keys(key_files: list[Path]) -> TrustedKeys:
    """Return the keys given (`--key`), or else the trusted keys folder's."""
    from plangate.signing import TrustedKeys
    from plangate.signing_keys import load_trusted_keys, read_public_key

    if key_files:
        return TrustedKeys([read_public_key(path) for path in key_files])
    return load_trusted_keys(load_settings())
