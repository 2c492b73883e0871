"""What the sealer remembers of the audit checkpoints, outside the database it seals.

Checkpoints live in the store, so someone who can delete rows can delete the newest ones: what
they sealed is unsealed again, can be rewritten (an entry's hash needs no key), and the gate's
next sweep would seal the rewrite with its own key, so that `audit verify` says intact. The
one thing such a person cannot reach is the sealer's own data folder. So each process that
seals (a gate worker, `plangate audit checkpoint`) keeps there the newest checkpoint it wrote
or saw, and before it seals again checks that this checkpoint is still in the store, as it
was: if not, checkpoints were deleted (or the database restored from a backup), and it seals
nothing until a person has looked (`plangate audit checkpoint --accept-missing`).

The memory is a small JSON file written whole (`os.replace`), one per store the folder's
sealer used (named by a digest of the store's URL, its password left out): a folder that once
sealed an embedded SQLite file and is then pointed at the team's PostgreSQL remembers nothing
of the latter, instead of taking the SQLite file's checkpoint for a deleted one. A folder
without a memory of its store (a new gate, a data folder lost with its pod, another store)
trusts the store as it finds it: that is the window. A memory written before memories named
their store (`FILE_NAME` alone) is read for any store, as it was, until the next is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken
from plangate.small_files import read_text
from plangate.store.engine import shown_url
from plangate.store.models import AuditCheckpointRow, AuditRow

FILE_NAME = "audit-checkpoint.json"


@dataclass(frozen=True)
class Seen:
    """A checkpoint as the sealer last saw it: its id and hash."""

    id: int
    hash: str
    first: str = ""  # the store's first audit entry's hash: it, under any URL (none: older)


def store_of(session: Session) -> str:
    """Return the URL of the store `session` reads, as it may be written down (no password)."""
    return shown_url(session.get_bind().engine.url)


def first_entry(session: Session) -> str:
    """Return the hash of the store's first audit entry ("" for an empty log)."""
    first = session.scalar(select(AuditRow.hash).order_by(AuditRow.seq).limit(1))
    return str(first or "")


class CheckpointMemory:
    """The newest checkpoint this data folder's sealer wrote or saw in each store it used."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir
        self.legacy = data_dir / FILE_NAME

    def path(self, store: str) -> Path:
        """Return the file remembering the store at URL `store` (as `store_of` gives it)."""
        digest = hashlib.sha256(store.encode()).hexdigest()[:16]
        return self.folder / f"audit-checkpoint-{digest}.json"

    def recalled(self, session: Session) -> tuple[Seen, Path] | None:
        """Return the checkpoint remembered of the store `session` reads, and its file.

        Its URL's file first; else one written for another spelling of its URL (another user,
        host alias or driver) that names the same first entry, so that a change of settings
        does not quietly forget it; else a memory from before memories named their store.
        """
        own = self.path(store_of(session))
        if (seen := _read(own)) is not None:
            return seen, own
        first = first_entry(session)
        for path in sorted(self.folder.glob("audit-checkpoint-*.json")):
            if (seen := _read(path)) is not None and first and seen.first == first:
                return seen, path
        if (seen := _read(self.legacy)) is not None:
            return seen, self.legacy
        return None

    def check(self, session: Session) -> None:
        """Raise AuditBroken if the checkpoint remembered is gone from the store or changed."""
        recalled = self.recalled(session)
        if recalled is None:
            return
        seen, path = recalled
        stored = session.execute(
            select(AuditCheckpointRow.hash).where(AuditCheckpointRow.id == seen.id)
        ).scalar_one_or_none()
        if stored == seen.hash:
            return
        what = "is gone from the store" if stored is None else "was changed in the store"
        raise AuditBroken(
            f"audit checkpoint {seen.id}, which this data folder saw last in this store "
            f"({path}), "
            f"{what}: checkpoints were deleted or the database restored from a backup, which "
            "unseals what they sealed, so nothing is sealed until a person looks. Check the "
            "log against your last signed export (`plangate audit verify --against FILE`); "
            "once the cause is known, seal again with `plangate audit checkpoint "
            "--accept-missing`, run with this data folder"
        )

    def remember_newest(self, session: Session) -> None:
        """Remember the store's newest checkpoint (call once what wrote it has committed)."""
        newest = session.execute(
            select(AuditCheckpointRow.id, AuditCheckpointRow.hash)
            .order_by(AuditCheckpointRow.id.desc())
            .limit(1)
        ).one_or_none()
        if newest is None:
            return
        self.remember(store_of(session), Seen(newest.id, newest.hash, first_entry(session)))
        older = _read(self.legacy)
        if older is not None and self._holds(session, older):
            self.legacy.unlink()  # this store's, and now in its own file; another's stays

    def remember(self, store: str, seen: Seen) -> None:
        """Write `seen` as the checkpoint remembered of `store`, whole or not at all."""
        path = self.path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"id": seen.id, "hash": seen.hash, "first": seen.first, "store": store}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)

    @staticmethod
    def _holds(session: Session, seen: Seen) -> bool:
        stored = select(AuditCheckpointRow.hash).where(AuditCheckpointRow.id == seen.id)
        return session.scalar(stored) == seen.hash

    def forget(self, session: Session) -> Path | None:
        """Forget the checkpoint remembered of the store `session` reads; return its file."""
        recalled = self.recalled(session)
        if recalled is None:
            return None
        recalled[1].unlink(missing_ok=True)
        return recalled[1]


def _read(path: Path) -> Seen | None:
    """Return the checkpoint a memory file holds (None: no such file); AuditBroken if damaged."""
    try:
        data = json.loads(read_text(path, 4096))
        return Seen(int(data["id"]), str(data["hash"]), str(data.get("first") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditBroken(
            f"cannot read {path}, where this folder remembers the newest audit checkpoint it "
            f"saw ({exc}): if it was damaged, check the log against your last signed export "
            "(`plangate audit verify --against FILE`), then `plangate audit checkpoint "
            "--accept-missing`"
        ) from exc
