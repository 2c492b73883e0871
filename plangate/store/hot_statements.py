"""The store's hottest statements, run on the driver's own cursor: compiled once, rows as tuples.

SQLAlchemy spends 20-28 µs on each execution of even a compiled, cached statement on SQLite
(its execution context, parameter handling and result object), where `sqlite3` takes 2-4 µs;
on PostgreSQL about 108 µs of CPU where psycopg's cursor takes 82 (`bench/hot_statements.py`). The
audit log appends three statements per entry, eight entries per goal; every stage reads and
moves its goal's status, writes to the outbox, inserts its rows and claims, and reads what it
needs: every statement of a goal (60 embedded; 62 across processes, where the planner and the
gate also read the catalog executors published), most inside SQLite's one write lock, which
every stage of every process takes in turn. So those statements are compiled by SQLAlchemy
once (its SQL, its parameters' names or order, their type conversions both ways, its columns'
defaults) and run on the driver's connection of the session's own transaction (`sqlite3`, or
psycopg 3 on PostgreSQL). Errors are wrapped as SQLAlchemy wraps them, as `BEGIN` is in
`engine`. A lost PostgreSQL connection is seen by SQLAlchemy all the same, when it rolls the
failed transaction back: it drops that connection and every pooled one as old as it (one
failure per server restart, not one per pooled connection) and raises its own error, which
says so. Other drivers go through SQLAlchemy as usual (`Session.execute`).
"""

from __future__ import annotations

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
class _OnDriver:
    """A statement as the driver takes it: its SQL, how each value is made, how rows convert."""

    sql: str
    values: tuple[Callable[[Mapping[str, Any]], Any], ...]
    # The name each value goes under (psycopg's named parameters); None: positional (sqlite3).
    names: tuple[str, ...] | None
    # Per selected column, how SQLAlchemy converts what the driver returns (None: as it is);
    # None for a statement whose columns all come as they are.
    converters: tuple[Callable[[Any], Any] | None, ...] | None
    # An INSERT on PostgreSQL returns its new key (SQLAlchemy adds the RETURNING): not a row.
    returns_key: bool

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.names is None:
            return tuple([make(params) for make in self.values])  # a list is built faster
        return {name: make(params) for name, make in zip(self.names, self.values, strict=True)}

    def convert(self, rows: list[Row]) -> list[Row]:
        if self.converters is None:
            return rows
        converters = self.converters
        return [
            tuple(v if c is None else c(v) for c, v in zip(converters, row, strict=True))
            for row in rows
        ]


class HotStatement:
    """A Core statement run on the driver's cursor (SQLite, psycopg), through SQLAlchemy elsewhere.

    `column_keys` names the columns an INSERT or UPDATE sets (as the parameters passed will).
    Rows come back as tuples, each value converted as SQLAlchemy converts it (JSON, times).
    """

    def __init__(self, statement: Sql, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        # Compiled for each kind of store a process opens (tests open both).
        self._on_driver: dict[tuple[str, str], _OnDriver] = {}

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[Row]:
        """Run the statement in the session's transaction; return its rows (none if it has none)."""
        result, on_driver = self._run(session, params)
        if on_driver is None:
            return [tuple(row) for row in result] if result.returns_rows else []
        if on_driver.returns_key or result.description is None:
            return []
        return on_driver.convert(result.fetchall())

    def first(self, session: Session, params: Mapping[str, Any]) -> Row | None:
        """Run a SELECT in the session's transaction; return its first row, if it has one."""
        rows = self.rows(session, params)
        return rows[0] if rows else None

    def rowcount(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run an INSERT, UPDATE or DELETE in the session's transaction; return the rows it hit."""
        # psycopg reports -1 for an INSERT's rowcount unless asked to keep it.
        result, _ = self._run(session, params, {"preserve_rowcount": True})
        return int(result.rowcount)

    def inserted_id(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run an INSERT in the session's transaction; return the new row's integer key."""
        result, on_driver = self._run(session, params)
        if on_driver is None:
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])
        if on_driver.returns_key:
            return int(result.fetchone()[0])
        if on_driver.names is not None:  # psycopg has no lastrowid
            raise TypeError("an INSERT whose key the database does not make: not supported")
        assert result.lastrowid is not None
        return int(result.lastrowid)

    def _run(
        self,
        session: Session,
        params: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
    ) -> tuple[Any, _OnDriver | None]:
        """Run the statement; return the driver's cursor and what it ran, or SQLAlchemy's result."""
        # Changes made through the ORM are written first, on either store, so that a read sees
        # them and rows go in the order they were made. (`Session.execute` autoflushes before
        # ORM statements only, not before these, which are on tables.)
        if session.autoflush and (session.new or session.dirty or session.deleted):
            session.flush()
        execute = _driver_execute(session)
        if execute is None:
            return self._through_sqlalchemy(session, params, options), None
        dialect = session.get_bind().dialect
        on_driver = self._on_driver.get((dialect.name, dialect.driver)) or self._compile(dialect)
        try:
            return execute(on_driver.sql, on_driver.bind(params)), on_driver
        except dialect.loaded_dbapi.Error as exc:  # the driver's own: wrapped (a value that
            # does not convert raises as it does under SQLAlchemy, unwrapped)
            raise DBAPIError.instance(
                on_driver.sql, dict(params), exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc

    def _through_sqlalchemy(
        self, session: Session, params: Mapping[str, Any], options: Mapping[str, Any] | None
    ) -> CursorResult[Any]:
        executed = session.execute(self._statement, params, execution_options=options or {})
        return cast(CursorResult[Any], executed)

    def _compile(self, dialect: Dialect) -> _OnDriver:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
        assert isinstance(compiled, SQLCompiler)
        # What SQLAlchemy works out at each execution: a column's default or onupdate value
        # (made here as it would make it), a list spread into IN (...) (refused).
        defaults = {column.key: column.default for column in compiled.insert_prefetch}
        defaults |= {column.key: column.onupdate for column in compiled.update_prefetch}
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise TypeError("a parameter is rendered at run time (IN, LIMIT): not supported")
        converters = None
        if isinstance(self._statement, Select):
            # As SQLAlchemy's result converts each column (SQLite reports no column types).
            try:
                found = tuple(
                    column.type.dialect_impl(dialect).result_processor(dialect, None)
                    for column in self._statement.selected_columns
                )
            except TypeError as exc:  # (a number on psycopg: its conversion needs the driver's
                # type code of the column, known only from a result)
                raise TypeError(
                    "a column converted by the driver's type code of it: not supported"
                ) from exc
            converters = found if any(found) else None
        # sqlite3 takes its values in order; psycopg by name (as SQLAlchemy wrote each in the SQL).
        positional = compiled.positiontup is not None
        order = list(compiled.positiontup or compiled.binds)
        values = tuple(_maker(compiled, name, dialect, defaults) for name in order)
        names = None if positional else tuple(compiled.escaped_bind_names.get(n, n) for n in order)
        returns_key = bool(compiled.implicit_returning)
        on_driver = _OnDriver(compiled.string, values, names, converters, returns_key)
        self._on_driver[(dialect.name, dialect.driver)] = on_driver
        return on_driver


# Where a session keeps how its transaction runs a statement on the driver (`Session.info`).
_DRIVER = "plangate.driver_execute"
# The drivers whose connections run hot statements themselves: (dialect, driver).
_DRIVERS = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}

Execute = Callable[[str, Any], Any]  # run SQL with its values; return the driver's cursor


def _driver_execute(session: Session) -> Execute | None:
    """Return what runs SQL on the driver in the session's transaction (None: SQLAlchemy does).

    That is the SQLite connection's `execute`, or one psycopg cursor's.

    Looked up once per transaction and kept in the session: SQLAlchemy's `Session.connection`
    walks its transaction's state on each call (about a third of a hot statement's own cost).
    The connection stays the same until the transaction ends; a new one looks again. On
    psycopg one cursor serves the transaction (each statement's rows are read before the
    next runs): a new cursor per statement cost a fifth of psycopg's own time.
    """
    kept = session.info.get(_DRIVER)
    transaction = session.get_transaction()
    # Only while that transaction stands: one a failed flush rolled back is still the session's
    # until it is rolled back there, and its connection, out of any transaction, would commit
    # each statement on its own. SQLAlchemy then refuses the statement, as it should.
    if transaction is not None and transaction.is_active and kept and kept[0] is transaction:
        return cast(Execute | None, kept[1])
    dialect = session.get_bind().dialect
    execute: Execute | None = None
    if (dialect.name, dialect.driver) in _DRIVERS:
        driver: Any = session.connection().connection.driver_connection
        execute = driver.cursor().execute if dialect.name == "postgresql" else driver.execute
    session.info[_DRIVER] = (session.get_transaction(), execute)
    return execute


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
