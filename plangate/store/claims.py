"""Claims: `INSERT ... ON CONFLICT DO NOTHING`, portable across SQLite and PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from plangate.store.hot_statements import HotStatement
from plangate.store.models import Base

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

# Built once per table, dialect and columns given, run on the table, not the ORM entity (the
# ORM's bulk insert machinery took two thirds of a claim's time), and as hot statements (on
# SQLite, on the driver's cursor). Column defaults still apply.
_CLAIMS: dict[tuple[str, str, tuple[str, ...]], HotStatement] = {}


def _claim(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    # Imported here: the PostgreSQL dialect alone is a tenth of a command's start-up, and
    # commands that only read never claim.
    from sqlalchemy.dialects import postgresql, sqlite

    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"claims are not implemented for {dialect}")


def insert_if_absent(session: Session, model: type[Base], values: dict[str, Any]) -> bool:
    """Insert a row unless its key exists; return True if this call inserted it (won the claim)."""
    table = cast(Table, model.__table__)
    dialect = session.get_bind().dialect.name
    key = (dialect, table.name, tuple(values))
    statement = _CLAIMS.get(key)
    if statement is None:
        statement = _CLAIMS[key] = HotStatement(_claim(dialect, table), tuple(values))
    return statement.rowcount(session, values) == 1
