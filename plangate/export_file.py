"""An audit export's file: entries written as JSON lines or CSV, read back, checked link by link.

One place writes each format and one reads it back, so a file's entries can be written again
exactly as they were exported: what tells a file only laid out anew from one changed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from plangate.csv_cells import as_cell, plain
from plangate.errors import AuditBroken
from plangate.printable import printable_line
from plangate.store.audit import chain_name, entry_hash
from plangate.store.audit_entries import EXPORT_FIELDS

# An entry and the line of the file it is on (where a CSV row spans lines, its last).
Numbered = tuple[int, dict[str, Any]]


def write_entries(stream: TextIO, entries: Iterable[dict[str, Any]], output_format: str) -> None:
    """Write entries as `plangate audit export` does: JSON lines, or CSV (`output_format`)."""
    if output_format == "csv":
        writer = csv.DictWriter(stream, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for entry in entries:
            row = {**entry, "data": json.dumps(entry["data"], sort_keys=True)}
            writer.writerow({name: as_cell(value) for name, value in row.items()})
    else:
        for entry in entries:
            stream.write(json.dumps(entry, sort_keys=True) + "\n")


def read_entries(export: Path) -> list[dict[str, Any]]:
    """Read the entries of a JSON lines or CSV export (told apart by its first character)."""
    return [entry for _, entry in numbered_entries(export)]


def numbered_entries(export: Path) -> list[Numbered]:
    """Read an export's entries with the line each is on; AuditBroken at one that is no entry."""
    try:
        text = export.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AuditBroken(f"it is not UTF-8 text (byte {exc.start} is not)") from exc
    if text.lstrip().startswith("{") or not text.strip():
        return _json_lines(text)
    return _csv_rows(text)


def _json_lines(text: str) -> list[Numbered]:
    numbered = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            said = f"line {line}: it is not JSON ({exc.msg}, column {exc.colno})"
            raise AuditBroken(said) from exc
        if not isinstance(entry, dict):
            raise AuditBroken(f"line {line}: it is not an entry (a JSON object)")
        numbered.append((line, entry))
    return numbered


def _csv_rows(text: str) -> list[Numbered]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    numbered = []
    try:
        for row in reader:
            numbered.append((reader.line_num, _entry_of(row)))
    except (csv.Error, KeyError, TypeError, ValueError) as exc:
        said = f"line {reader.line_num}: it does not read as an entry ({_why(exc)})"
        raise AuditBroken(said) from exc
    return numbered


def _entry_of(row: Mapping[str | Any, Any]) -> dict[str, Any]:
    entry = {name: plain(cell) if isinstance(cell, str) else cell for name, cell in row.items()}
    entry["seq"] = int(entry["seq"])
    if entry.get("chain_seq"):
        entry["chain_seq"] = int(entry["chain_seq"])
    entry["data"] = json.loads(entry["data"])
    entry["goal_id"] = entry["goal_id"] or None
    return entry


def chain_problem(numbered: Sequence[Numbered]) -> str | None:
    """Return the first entry whose hash, link or order does not hold, within the export.

    Each entry is linked to the one before it in its own chain (a goal's, or the system's);
    exports written before per-goal chains have no `chain` and form one chain by `seq`.
    """
    previous: dict[str, dict[str, Any]] = {}
    for line, entry in numbered:
        try:
            problem = _link_problem(entry, previous.get(entry.get("chain") or ""))
        except (KeyError, TypeError, ValueError) as exc:  # a field edited away, or retyped
            problem = f"it is not an entry as exported ({_why(exc)})"
        if problem is not None:
            return f"{described(line, entry)}: {problem}"
        previous[entry.get("chain") or ""] = entry
    return None


def _link_problem(entry: Mapping[str, Any], before: Mapping[str, Any] | None) -> str | None:
    place = chain_place(entry)
    fields = (place, entry["at"], entry["goal_id"], entry["kind"], entry["actor"])
    if entry["hash"] != entry_hash(entry["prev_hash"], *fields, entry["data"]):
        return "its content does not match its hash"
    if before is None:
        return None
    if place <= chain_place(before):  # written once each, in order: never so as exported
        return f"it comes again, or out of order (after entry {chain_place(before)} of its chain)"
    if chain_place(before) + 1 == place and entry["prev_hash"] != before["hash"]:
        return "it does not follow the entry before it"
    return None


def chain_place(entry: Mapping[str, Any]) -> int:
    """Return an entry's place in its chain (its `seq` in an export from before chains)."""
    return int(entry.get("chain_seq") or entry["seq"])


def described(line: int, entry: Mapping[str, Any]) -> str:
    """Say where an entry is, as a person finds it: its line, its seq, its chain, its kind."""
    seq, kind = (printable_line(str(entry.get(name))) for name in ("seq", "kind"))
    chain, place = entry.get("chain"), entry.get("chain_seq")
    if isinstance(chain, str) and place:  # else an export from before chains
        kind = f"entry {printable_line(str(place))} of {chain_name(printable_line(chain))}, {kind}"
    return f"line {line}, entry {seq} ({kind})"


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}" if exc.args else "a field is missing"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
