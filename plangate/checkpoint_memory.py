"""What the sealer remembers of the audit checkpoints, outside the database it seals.

Checkpoints live in the store, so someone who can delete rows can delete the newest ones: what
they sealed is unsealed again, can be rewritten (an entry's hash needs no key), and the gate's
next sweep would seal the rewrite with its own key, so that `audit verify` says intact. The
one thing such a person cannot reach is the sealer's own data folder. So each process that
seals (a gate worker, `plangate audit checkpoint`) keeps there the newest checkpoint it wrote
or saw, and before it seals again checks that this checkpoint is still in the store, as it
was: if not, checkpoints were deleted (or the database restored from a backup), and it seals
nothing until a person has looked (`plangate audit checkpoint --accept-missing`).

The memory is a small JSON file written whole (`os.replace`). A folder without one (a new
gate, a data folder lost with its pod) trusts the store as it finds it: that is the window.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken
from plangate.small_files import read_text
from plangate.store.models import AuditCheckpointRow

FILE_NAME = "audit-checkpoint.json"


@dataclass(frozen=True)
class Seen:
    """A checkpoint as the sealer last saw it: its id and hash."""

    id: int
    hash: str


class CheckpointMemory:
    """The newest checkpoint this data folder's sealer wrote or saw (`FILE_NAME` in it)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME

    def recalled(self) -> Seen | None:
        """Return the checkpoint remembered, or None when this folder remembers none."""
        try:
            data = json.loads(read_text(self.path, 4096))
            return Seen(int(data["id"]), str(data["hash"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AuditBroken(
                f"cannot read {self.path}, where this folder remembers the newest audit "
                f"checkpoint it saw ({exc}): if it was damaged, check the log against your "
                "last signed export (`plangate audit verify --against FILE`), then "
                "`plangate audit checkpoint --accept-missing`"
            ) from exc

    def check(self, session: Session) -> None:
        """Raise AuditBroken if the checkpoint remembered is gone from the store or changed."""
        seen = self.recalled()
        if seen is None:
            return
        stored = session.execute(
            select(AuditCheckpointRow.hash).where(AuditCheckpointRow.id == seen.id)
        ).scalar_one_or_none()
        if stored == seen.hash:
            return
        what = "is gone from the store" if stored is None else "was changed in the store"
        raise AuditBroken(
            f"audit checkpoint {seen.id}, which this gate's folder saw last ({self.path}), "
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
        if newest is not None:
            self.remember(Seen(newest.id, newest.hash))

    def remember(self, seen: Seen) -> None:
        """Write `seen` as the checkpoint remembered, whole or not at all."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"id": seen.id, "hash": seen.hash}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self.path)

    def forget(self) -> bool:
        """Forget the checkpoint remembered (a person looked); say whether there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
