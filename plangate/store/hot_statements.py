"""The store's hottest statements, run on SQLite's own cursor: compiled once, rows as tuples.

SQLAlchemy spends 20-28 µs on each execution of even a compiled, cached statement (its
execution context, parameter handling and result object), where `sqlite3` takes 2-4 µs. The
audit log appends three statements per entry, eight entries per goal; every stage reads and
moves its goal's status, writes to the outbox, inserts its rows and claims, and reads what it
needs: every statement of a goal (60 embedded; 62 across processes, where the planner and the
gate also read the catalog executors published), most inside SQLite's one write lock, which
every stage of every process takes in turn. So those statements are compiled by SQLAlchemy
once (its SQL, its parameters' order, their type conversions both ways, its columns' defaults)
and run on the driver's connection of the session's own transaction. Errors are wrapped as
SQLAlchemy wraps them, as `BEGIN` is in `engine`.

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
from sqlalchemy.util import get_callable_argspec

Row = tuple[Any, ...]
Sql = Select[Any] | Insert | Update


@dataclass(frozen=True)
class _OnSqlite:
    """A statement as sqlite3 takes it: its SQL, and how each positional value is made."""

    sql: str
    values: tuple[Callable[[Mapping[str, Any]], Any], ...]
    # Per selected column, how SQLAlchemy converts what the driver returns (None: as it is);
    # None for a statement whose columns all come as they are.
    converters: tuple[Callable[[Any], Any] | None, ...] | None

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple([make(params) for make in self.values])  # a list is built faster

    def convert(self, rows: list[Row]) -> list[Row]:
        if self.converters is None:
            return rows
        converters = self.converters
        return [
            tuple(v if c is None else c(v) for c, v in zip(converters, row, strict=True))
            for row in rows
        ]


class HotStatement:
    """A Core statement that runs on the driver's cursor on SQLite, through SQLAlchemy elsewhere.

    `column_keys` names the columns an INSERT or UPDATE sets (as the parameters passed will).
    Rows come back as tuples, each value converted as SQLAlchemy converts it (JSON, times).
    """

    def __init__(self, statement: Sql, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._on_sqlite: _OnSqlite | None = None

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[Row]:
        """Run the statement in the session's transaction; return its rows (none if it has none)."""
        result = self._run(session, params)
        if isinstance(result, sqlite3.Cursor):
            assert self._on_sqlite is not None  # compiled by the run
            return self._on_sqlite.convert(result.fetchall())
        return [tuple(row) for row in result] if result.returns_rows else []

    def first(self, session: Session, params: Mapping[str, Any]) -> Row | None:
        """Run a SELECT in the session's transaction; return its first row, if it has one."""
        rows = self.rows(session, params)
        return rows[0] if rows else None

    def rowcount(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run an INSERT, UPDATE or DELETE in the session's transaction; return the rows it hit."""
        # psycopg reports -1 for an INSERT's rowcount unless asked to keep it.
        result = self._run(session, params, {"preserve_rowcount": True})
        return int(result.rowcount)

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
        self,
        session: Session,
        params: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
    ) -> sqlite3.Cursor | CursorResult[Any]:
        # Changes made through the ORM are written first, on either store, so that a read sees
        # them and rows go in the order they were made. (`Session.execute` autoflushes before
        # ORM statements only, not before these, which are on tables.)
        if session.autoflush and (session.new or session.dirty or session.deleted):
            session.flush()
        driver = _sqlite_driver(session)
        if driver is None:
            executed = session.execute(self._statement, params, execution_options=options or {})
            return cast(CursorResult[Any], executed)
        on_sqlite = self._on_sqlite or self._compile(session.get_bind().dialect)
        try:
            return driver.execute(on_sqlite.sql, on_sqlite.bind(params))
        except sqlite3.Error as exc:  # the driver's own: wrapped (a value that does not
            # convert raises as it does under SQLAlchemy, unwrapped)
            raise DBAPIError.instance(on_sqlite.sql, dict(params), exc, sqlite3.Error) from exc

    def _compile(self, dialect: Dialect) -> _OnSqlite:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None  # SQLite's parameters are positional
        # What SQLAlchemy works out at each execution: a column's default or onupdate value
        # (made here as it would make it), a list spread into IN (...) (refused).
        defaults = {column.key: column.default for column in compiled.insert_prefetch}
        defaults |= {column.key: column.onupdate for column in compiled.update_prefetch}
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise TypeError("a parameter is rendered at run time (IN, LIMIT): not supported")
        converters = None
        if isinstance(self._statement, Select):
            # As SQLAlchemy's result converts each column (SQLite reports no column types).
            found = tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in self._statement.selected_columns
            )
            converters = found if any(found) else None
        values = tuple(_maker(compiled, name, dialect, defaults) for name in compiled.positiontup)
        self._on_sqlite = _OnSqlite(compiled.string, values, converters)
        return self._on_sqlite


# Where a session keeps the driver connection of its transaction (`Session.info`).
_DRIVER = "plangate.sqlite_driver"


def _sqlite_driver(session: Session) -> sqlite3.Connection | None:
    """Return the SQLite driver connection of the session's transaction (None on other stores).

    Looked up once per transaction and kept in the session: SQLAlchemy's `Session.connection`
    walks its transaction's state on each call (about a third of a hot statement's own cost).
    The connection stays the same until the transaction ends; a new one looks again.
    """
    kept = session.info.get(_DRIVER)
    transaction = session.get_transaction()
    # Only while that transaction stands: one a failed flush rolled back is still the session's
    # until it is rolled back there, and its connection, out of any transaction, would commit
    # each statement on its own. SQLAlchemy then refuses the statement, as it should.
    if transaction is not None and transaction.is_active and kept and kept[0] is transaction:
        return cast(sqlite3.Connection | None, kept[1])
    if session.get_bind().dialect.name != "sqlite":
        driver = None
    else:
        found = session.connection().connection.driver_connection
        assert isinstance(found, sqlite3.Connection)
        driver = found
    session.info[_DRIVER] = (session.get_transaction(), driver)
    return driver


def _maker(
    compiled: SQLCompiler, name: str, dialect: Dialect, defaults: Mapping[str, Any]
) -> Callable[[Mapping[str, Any]], Any]:
    """Return what makes one positional value: given, the statement's, or the column's default."""
    bind = compiled.binds[name]
    if bind.callable is not None:
        raise TypeError(f"the parameter {name} has a default made at run time: not supported")
    process = bind.type.dialect_impl(dialect).bind_processor(dialect)
    if bind.key in defaults:
        make = _default_maker(bind.key, defaults[bind.key])
        if process is None:
            return lambda params: make()
        return lambda params: process(make())
    if not bind.required:  # a value written into the statement (a LIMIT, a constant)
        fixed = process(bind.value) if process else bind.value
        return lambda params: fixed
    if process is None:
        return lambda params: params[name]
    return lambda params: process(params[name])


def _default_maker(column: str, default: Any) -> Callable[[], Any]:
    """Return what makes a column's default value as SQLAlchemy makes it: a constant, or a call.

    SQLAlchemy wraps a default callable that takes no argument (`utcnow`, `dict`) so that it
    can pass its execution context, and keeps the callable as `__wrapped__`. A callable that
    wants the context, or a SQL expression, needs SQLAlchemy's execution: refused.
    """
    if default.is_scalar:
        value = default.arg
        return lambda: value
    wrapped = getattr(default.arg, "__wrapped__", None) if default.is_callable else None
    if wrapped is None or _positionals(wrapped):
        raise TypeError(
            f"the column {column} takes a default SQLAlchemy makes with its execution context: "
            "give it a value in the statement's parameters and its column_keys"
        )
    return cast(Callable[[], Any], wrapped)


def _positionals(function: Callable[..., Any]) -> int:
    """Return how many positional arguments without a default `function` takes (as SQLAlchemy)."""
    try:
        spec = get_callable_argspec(function, no_self=True)
    except TypeError:  # a builtin (`dict`, `list`): SQLAlchemy calls it without arguments
        return 0
    return len(spec.args) - len(spec.defaults or ())
