"""Rows inserted with plain statements, built once per table and columns: the hot path's writes.

The ORM's unit of work (add, then flush at the next query or the commit) took four times what
one INSERT on the table takes, for rows that are written once and never changed in the same
transaction; and SQLAlchemy's execution of even a plain INSERT is several times the driver's
(`hot_statements`). Column defaults (`created_at` and the like) still apply.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from plangate.store.hot_statements import HotStatement
from plangate.store.models import Base

_INSERTS: dict[tuple[str, tuple[str, ...]], HotStatement] = {}


def insert_row(session: Session, model: type[Base], values: dict[str, Any]) -> None:
    """Insert one row into `model`'s table in the caller's transaction."""
    table = cast(Table, model.__table__)
    columns = tuple(values)
    statement = _INSERTS.get((table.name, columns))
    if statement is None:
        statement = _INSERTS[(table.name, columns)] = HotStatement(insert(table), columns)
    statement.rows(session, values)
