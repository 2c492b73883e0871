"""A CSV cell a spreadsheet shows as text, never runs as a formula; and the value read back.

An audit entry's actor is what a submitter said (`submitted_by`): `=cmd|'/c calc'!A1` was
written as it is, and a spreadsheet opening the export ran it. A cell that begins with a
character a spreadsheet reads as a formula (or with the quote that marks one) is written
behind a quote (as OWASP advises), and `plain` takes exactly that quote away, so a checked
export's hashes still hold.
"""

from __future__ import annotations

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def as_cell(value: object) -> object:
    """Return `value` fit for a CSV cell: text that a spreadsheet could run, behind a quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def plain(cell: str) -> str:
    """Return the value a cell written by `as_cell` holds."""
    return cell[1:] if cell.startswith("'") else cell
