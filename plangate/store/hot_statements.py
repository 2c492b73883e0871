"""The store's hottest statements, run on SQLite's own cursor: compiled once, rows as tuples.

SQLAlchemy spends 20-28 µs on each execution of even a compiled, cached statement (its
execution context, parameter handling and result object), where `sqlite3` takes 2-4 µs. The
audit log appends three statements per entry, eight entries per goal; every stage reads and
moves its goal's status and writes to the outbox: 37 of a goal's 56 statements, each inside
SQLite's one write lock, which every stage of every process takes in turn. So those statements
are compiled by SQLAlchemy once (its SQL, its parameters' order, their type conversions) and run
on the driver's connection of the session's own transaction. Errors are wrapped as SQLAlchemy
wraps them, as `BEGIN` is in `engine`.

On PostgreSQL they go through SQLAlchemy as usual (`Session.execute`): a dead connection must
be seen there to be dropped from the pool, and a round trip to the server dwarfs the saving. A
SQLite file has no connection to lose, so its errors need no such handling.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Insert, Select, Update
from sqlalchemy.sql.compiler import SQLCompiler

Row = tuple[Any, ...]
Sql = Select[Any] | Insert | Update


@dataclass(frozen=True)
class _OnSqlite:
    """A statement as sqlite3 takes it: its SQL, and how each positional value is made."""

    sql: str
    values: tuple[Callable[[Mapping[str, Any]], Any], ...]

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(make(params) for make in self.values)


class HotStatement:
    """A Core statement that runs on the driver's cursor on SQLite, through SQLAlchemy elsewhere.

    `column_keys` names the columns an INSERT or UPDATE sets (as the parameters passed will).
    Only statements whose rows need no conversion on the way out are accepted (integers, text):
    anything else is for SQLAlchemy's result machinery.
    """

    def __init__(self, statement: Sql, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._on_sqlite: _OnSqlite | None = None

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[Row]:
        """Run the statement in the session's transaction; return its rows (none if it has none)."""
        result = self._run(session, params)
        if isinstance(result, sqlite3.Cursor):
            return result.fetchall()
        return [tuple(row) for row in result] if result.returns_rows else []

    def inserted_id(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run an INSERT in the session's transaction; return the new row's integer key."""
        result = self._run(session, params)
        if isinstance(result, sqlite3.Cursor):
            assert result.lastrowid is not None
            return result.lastrowid
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def _run(
        self, session: Session, params: Mapping[str, Any]
    ) -> sqlite3.Cursor | CursorResult[Any]:
        if session.get_bind().dialect.name != "sqlite":
            return cast(CursorResult[Any], session.execute(self._statement, params))
        # As `Session.execute` would: changes made through the ORM are written first.
        if session.autoflush and (session.new or session.dirty or session.deleted):
            session.flush()
        connection = session.connection()
        on_sqlite = self._on_sqlite or self._compile(connection.dialect)
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            return driver.execute(on_sqlite.sql, on_sqlite.bind(params))
        except sqlite3.Error as exc:  # the driver's own: wrapped (a value that does not
            # convert raises as it does under SQLAlchemy, unwrapped)
            raise DBAPIError.instance(on_sqlite.sql, dict(params), exc, sqlite3.Error) from exc

    def _compile(self, dialect: Dialect) -> _OnSqlite:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None  # SQLite's parameters are positional
        # What SQLAlchemy would work out at each execution, and this path would miss: a
        # column's default or onupdate value, a list spread into IN (...).
        if compiled.insert_prefetch or compiled.update_prefetch:
            names = [
                column.name for column in (*compiled.insert_prefetch, *compiled.update_prefetch)
            ]
            raise TypeError(
                f"the columns {', '.join(names)} take a default made at run time: give them "
                "a value in the statement's parameters and its column_keys"
            )
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise TypeError("a parameter is rendered at run time (IN, LIMIT): not supported")
        if isinstance(self._statement, Select):
            for column in self._statement.selected_columns:
                if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                    raise TypeError(
                        f"{column} is converted on the way out: run this statement through "
                        "SQLAlchemy, not as a HotStatement"
                    )
        values = tuple(_maker(compiled, name, dialect) for name in compiled.positiontup)
        self._on_sqlite = _OnSqlite(compiled.string, values)
        return self._on_sqlite


def _maker(
    compiled: SQLCompiler, name: str, dialect: Dialect
) -> Callable[[Mapping[str, Any]], Any]:
    """Return what makes one positional value from the parameters: given, or the statement's."""
    bind = compiled.binds[name]
    if bind.callable is not None:
        raise TypeError(f"the parameter {name} has a default made at run time: not supported")
    process = bind.type.dialect_impl(dialect).bind_processor(dialect)
    if not bind.required:  # a value written into the statement (a LIMIT, a constant)
        fixed = process(bind.value) if process else bind.value
        return lambda params: fixed
    if process is None:
        return lambda params: params[name]
    return lambda params: process(params[name])
