"""Claims: `INSERT ... ON CONFLICT DO NOTHING`, portable across SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from plangate.store.models import Base


def insert_if_absent(session: Session, model: type[Base], values: dict[str, Any]) -> bool:
    """Insert a row unless its key exists; return True if this call inserted it (won the claim)."""
    dialect = session.get_bind().dialect.name
    statement: sqlite.Insert | postgresql.Insert
    if dialect == "sqlite":
        statement = sqlite.insert(model).values(**values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        statement = postgresql.insert(model).values(**values).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"claims are not implemented for {dialect}")
    # psycopg reports -1 for an INSERT's rowcount unless asked to keep it.
    result = session.execute(statement, execution_options={"preserve_rowcount": True})
    return bool(getattr(result, "rowcount", 0) == 1)
