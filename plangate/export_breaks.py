"""Where a signed export that is not the file signed was changed: its first break, if it shows.

The file's SHA-256 says only that something changed; an auditor must report which record. So
the changed file is read as far as it reads and held, entry by entry, to what the manifest and
its own chains say: each entry's hash and link, its chain's order, the count and the ends
signed, a chain missing an entry between two it holds. Where none of that breaks, it is said
plainly: the entries are those signed and only the layout differs, or it cannot be told where.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plangate.errors import AuditBroken
from plangate.export_file import (
    Numbered,
    chain_place,
    chain_problem,
    described,
    numbered_entries,
    write_entries,
)
from plangate.store.audit import LEGACY_CHAIN
from plangate.store.audit_entries import EXPORT_FIELDS


def first_break(export: Path, facts: Mapping[str, Any]) -> str:
    """Say where a changed export first breaks, or that it cannot be told where.

    `facts`: what its signed manifest says (the count, the first and last hashes, the digest).
    """
    try:
        numbered = numbered_entries(export)
    except AuditBroken as exc:
        return str(exc)
    return (
        chain_problem(numbered)
        or _fields_problem(numbered)
        or _ends_problem(numbered, facts)
        or _count_problem(numbered, facts.get("count"))
        or _layout(numbered, facts)
    )


def _fields_problem(numbered: Sequence[Numbered]) -> str | None:
    """Name an entry with a field no export writes, or out of the log's order (neither hashed)."""
    seq = 0
    for line, entry in numbered:
        added = ", ".join(sorted(str(name) for name in entry if name not in EXPORT_FIELDS))
        if added:
            return f"{described(line, entry)}: it holds fields no export writes ({added})"
        current = entry.get("seq")
        if not isinstance(current, int) or current <= seq:
            return f"{described(line, entry)}: its seq is not a number after {seq}"
        seq = current
    return None


def _ends_problem(numbered: Sequence[Numbered], facts: Mapping[str, Any]) -> str | None:
    """Say where the first or last entry signed went, if it is not where the manifest says."""
    hashes = [entry["hash"] for _, entry in numbered]
    first, last = facts.get("first_hash"), facts.get("last_hash")
    if hashes and hashes[0] != first:
        if first not in hashes:
            return f"the first entry signed (entry {facts.get('first_seq')}) is not in the file"
        before = hashes.index(first)
        line, _ = numbered[before - 1]
        return f"{before} entries were added before the first entry signed, up to line {line}"
    if hashes and hashes[-1] != last:
        if last not in hashes:
            return f"the last entry signed (entry {facts.get('last_seq')}) is not in the file"
        line, _ = numbered[hashes.index(last) + 1]
        added = len(hashes) - hashes.index(last) - 1
        return f"{added} entries were added after the last entry signed, from line {line}"
    return None


def _count_problem(numbered: Sequence[Numbered], count: object) -> str | None:
    """Name an entry missing between two its chain holds, when the count is not the one signed."""
    if len(numbered) == count:
        return None
    previous: dict[str, int] = {}
    for line, entry in numbered:
        chain = entry.get("chain")
        place = chain_place(entry)
        # Before chains (and in the legacy chain), one goal's entries skip the others'.
        if isinstance(chain, str) and chain != LEGACY_CHAIN:
            if chain in previous and place > previous[chain] + 1:
                return (
                    f"{described(line, entry)}: entry {place - 1} of its chain, the one before "
                    "it, is not in the file, though entries before and after it are"
                )
            previous[chain] = place
    held = f"it holds {len(numbered)} entries, the manifest says {count}"
    if isinstance(count, int) and len(numbered) > count:
        return f"{held}: those added were put at a chain's end, where its own links cannot show"
    return (
        f"{held}, and no chain in it misses an entry between two it holds: those removed were "
        "a chain's first or last in the file, which cannot be told"
    )


def _layout(numbered: Sequence[Numbered], facts: Mapping[str, Any]) -> str:
    """Say whether the entries, written again as exported, are the file signed."""
    scope = facts.get("scope")
    output_format = scope.get("format") if isinstance(scope, dict) else None
    written = io.StringIO(newline="")
    write_entries(written, (entry for _, entry in numbered), str(output_format))
    if hashlib.sha256(written.getvalue().encode("utf-8")).hexdigest() == facts.get("sha256"):
        return (
            "its entries are those signed, each unchanged and in order; only its layout "
            "differs (blank lines, spaces or line endings), which no hash covers"
        )
    return (
        "no entry breaks its hash or its chain, and the count and the first and last entries "
        "are those signed, so where it was changed cannot be told: compare it with another "
        "copy of the export"
    )
