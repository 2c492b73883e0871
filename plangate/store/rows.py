"""Rows inserted with plain statements, built once per table: the hot path's writes.

The ORM's unit of work (add, then flush at the next query or the commit) took four times what
one INSERT on the table takes, for rows that are written once and never changed in the same
transaction. Column defaults (`created_at` and the like) still apply: Core fills them in.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Insert, Table, insert
from sqlalchemy.orm import Session

from plangate.store.models import Base

_INSERTS: dict[str, Insert] = {}


def insert_row(session: Session, model: type[Base], values: dict[str, Any]) -> None:
    """Insert one row into `model`'s table in the caller's transaction."""
    table = cast(Table, model.__table__)
    statement = _INSERTS.get(table.name)
    if statement is None:
        statement = _INSERTS[table.name] = insert(table)
    session.execute(statement, values)
