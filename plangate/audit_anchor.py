"""An earlier signed export anchors the store's audit log: everything it held is still there.

The chains and the checkpoints live in the database, so someone who can delete rows can take
out a goal's whole chain together with every checkpoint that sealed it, and what is left
verifies. An export signed at the time (`plangate audit export --sign`) is kept elsewhere: its
entries' hashes, each over the entry's content and its place in its chain, must all still be
in the store (`plangate audit verify --against FILE`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from plangate.export_file import read_entries
from plangate.store import AuditRow, Store

_BATCH = 500  # hashes looked up per statement (well under every database's bound variables)


def missing_from(store: Store, export: Path) -> tuple[int, str | None]:
    """Return how many entries the export holds, and the first the store lacks (or None).

    The export must be verified first (`verify_export`): then each of its hashes stands for
    one entry exactly as it was, and a store without it lost or changed that entry.
    """
    entries = read_entries(export)
    with store.reading() as session:
        for batch in _batches(entries):
            hashes = [str(entry["hash"]) for entry in batch]
            held = set(session.scalars(select(AuditRow.hash).where(AuditRow.hash.in_(hashes))))
            for entry in batch:
                if entry["hash"] not in held:
                    return len(entries), _said(entry, export)
    return len(entries), None


def _batches(entries: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(entries), _BATCH):
        yield entries[start : start + _BATCH]


def _said(entry: dict[str, Any], export: Path) -> str:
    goal = f" of goal {entry['goal_id']}" if entry.get("goal_id") else ""
    return (
        f"entry {entry['seq']}{goal} ({entry['kind']}, {entry['at']}) of {export.name} is no "
        "longer in the store as it was: removed or changed since that export"
    )
