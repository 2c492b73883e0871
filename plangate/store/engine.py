"""The one place that opens the store: engine, schema and transactions."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from plangate.errors import ConfigError
from plangate.process_name import process_name
from plangate.redaction import redact
from plangate.store import schema
from plangate.store.kept_sessions import (
    MAX_KEPT,
    MAX_KEPT_ON_POSTGRES,
    POSTGRES_BUDGET,
    KeptBudget,
    KeptSessions,
)
from plangate.store.sqlite_lock import acquire_lock, release_lock
from plangate.store.sqlstates import what_to_do

log = logging.getLogger(__name__)
# An execution option of `Store.reading`'s connections: their transactions take no write lock.
READS_ONLY = "plangate_reads_only"
# Where a `Store.session` keeps what its transaction left for after the write lock (`info`).
_AFTER_RELEASE = "plangate_after_release"


class Store:
    """A database: `session()` opens one transaction, committed on success."""

    def __init__(self, engine: Engine, kept_threads: int | KeptBudget = 0) -> None:
        """Open a store on `engine`.

        `kept_threads`: how many threads may each keep a connection of the engine's pool for
        their write transactions (`kept_sessions`), or a budget shared with other stores; the
        pool must have room for them.
        """
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(
            engine.execution_options(**{READS_ONLY: True}), expire_on_commit=False
        )
        self._sqlite_lock = (
            acquire_lock(engine.url.database if _on_sqlite_file(engine.url) else None)
            if engine.dialect.name == "sqlite"
            else None
        )
        self._writers: AbstractContextManager[object] = self._sqlite_lock or nullcontext()
        self._kept = KeptSessions(engine, self._sessions, kept_threads) if kept_threads else None
        self._begin = self._kept.begin if self._kept is not None else self._sessions.begin

    def revision(self) -> str | None:
        """Return the schema revision the database is at, reading only (no write lock)."""
        return schema.current_revision(self.engine.execution_options(**{READS_ONLY: True}))

    @property
    def file_gone(self) -> bool:
        """Say whether the SQLite file this store opened is no longer at its path.

        Its connections still reach the file moved or deleted (they hold it open), while every
        other process opening the path finds none: the store is not the one configured.
        """
        database = self.engine.url.database
        return _on_sqlite_file(self.engine.url) and not Path(str(database)).exists()

    @property
    def serialises_writes(self) -> bool:
        """Say whether every writing transaction takes one write lock in turn (SQLite).

        Where it does, work that needs no lock is worth doing before a writing transaction
        (in `reading`); elsewhere (PostgreSQL) that extra transaction only costs.
        """
        return self._sqlite_lock is not None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Open a transaction; commit when the block ends, roll back if it raises.

        What the transaction left for later (`after_release`) runs once it has committed and
        let go of SQLite's write lock, which every other writer is waiting for.
        """
        later: list[Callable[[], None]] = []
        opened: Session | None = None
        try:
            with self._writers, self._begin() as opened:
                opened.info[_AFTER_RELEASE] = later
                yield opened
        finally:
            if opened is not None:  # a kept session goes on to other transactions
                opened.info.pop(_AFTER_RELEASE, None)
        for call in later:
            try:
                call()
            except Exception:  # the transaction committed: its message is not tried again
                log.exception("a step left for after a committed transaction failed")

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Open a transaction that only reads: it waits for no writer, and no writer for it.

        On SQLite a writer holds the database's one write lock for its whole transaction;
        a reader needs none (WAL mode: it reads the last commit), so a look at a goal's state
        (`status`, a run asking before each step whether its goal was cancelled) no longer
        queues behind every writer of every process. Anything written here is discarded.
        """
        # Closed, not committed: its transaction ends unwritten, and the rows read stay loaded.
        with self._readers() as session:
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """Open a reading transaction whose statements all see one moment, on any database.

        SQLite's reads do; PostgreSQL's default sees each statement's own moment, and a goal
        read before its move and its decision after it was shown "proposed" and "held" at once.
        """
        with self.reading() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    def close(self) -> None:
        """Release every pooled connection, and every thread's own."""
        if self._kept is not None:
            # No kept transaction of this process is under way (other processes' are theirs).
            with self._sqlite_lock.threads if self._sqlite_lock is not None else nullcontext():
                self._kept.close()
        self.engine.dispose()
        if self._sqlite_lock is not None:
            release_lock(self._sqlite_lock)
            self._sqlite_lock = None


def after_release(session: Session, call: Callable[[], None]) -> None:
    """Run `call` once the session's `Store.session` has committed and let go of the lock.

    For what needs no lock but must follow the commit, such as the log line of a committed
    move: on SQLite each moment in the lock is a moment every writer of every process waits.
    (Nested in another `Store.session` of the thread, the lock is still the outer one's.) A
    session not opened by `Store.session` runs it at once; an error it raises is logged.
    """
    later = session.info.get(_AFTER_RELEASE)
    if later is None:
        call()
    else:
        later.append(call)


def _sqlite_file(path: Path, create: bool) -> None:
    """Make the database file if it is missing and may be made: readable by its owner only."""
    if path.exists():
        return
    if not create:
        raise ConfigError(
            f"no database at {path}: check PLANGATE_DATABASE_URL (or PLANGATE_DATA_DIR); "
            "`plangate db upgrade` creates one there"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Goals, plans and tool outputs are in it, as secret as the keys beside it (0600); SQLite
    # gives its -wal and -shm files the database's own mode.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _on_sqlite_file(url: URL) -> bool:
    """Say whether the URL names a SQLite file (each connection to `:memory:` is a new database)."""
    database = url.database
    return (
        url.get_backend_name() == "sqlite"
        and bool(database)
        and database != ":memory:"
        and not str(database).startswith("file:")
        and url.query.get("mode") != "memory"
    )


def _sqlite_serialised_writes(engine: Engine) -> None:
    """Make SQLite transactions take the write lock up front.

    pysqlite's deferred BEGIN lets two writers both read and then fail to upgrade; an
    immediate BEGIN makes the second wait (up to the busy timeout) instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # In WAL mode NORMAL survives any process crash (what workers must survive) and skips
        # an fsync per commit; only an OS crash or power cut can lose the last commits.
        # PostgreSQL is the store for deployments that need more.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        reads_only = connection.get_execution_options().get(READS_ONLY, False)
        statement = "BEGIN" if reads_only else "BEGIN IMMEDIATE"
        # On the driver's own connection: SQLAlchemy's execution path (events, a context, a
        # result) was a fifth of a short transaction's time. Its errors are wrapped as
        # SQLAlchemy wraps them, which is what `is_outage` reads.
        try:
            connection.connection.driver_connection.execute(statement)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


POSTGRES_CONNECT_TIMEOUT = 10  # seconds; libpq's own is none
# libpq's options for every PostgreSQL connection, unless the URL's query sets them: a connection
# whose server went away mid-query (its host gone, the network cut) held its worker on a read
# that never ends; TCP keepalives find it dead within about a minute (idle 30 s, then 3 probes
# 10 s apart), and its transaction fails as an outage, waited out as any.
POSTGRES_OPTIONS = {
    "connect_timeout": POSTGRES_CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def make_engine(url: str, *, create: bool = True) -> Engine:
    """Create the SQLAlchemy engine for a store URL (SQLite gets serialised writes).

    Without `create`, a SQLite file that does not exist is a ConfigError: a command that only
    reads (or checks) must not leave an empty database at a mistyped path, nor report on one.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(
            f"PLANGATE_DATABASE_URL {url!r} is not a database URL "
            "(e.g. sqlite:///path/plangate.db or postgresql+psycopg://user@host/db)"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        pool = {}
        if _on_sqlite_file(parsed):
            assert parsed.database is not None  # a file is named
            _sqlite_file(Path(parsed.database), create)
            # Room in the pool beyond SQLAlchemy's default (5, and 10 more at a time) for the
            # connections threads keep (`Store`'s `kept_threads`).
            pool = {"max_overflow": 10 + MAX_KEPT}
        engine = create_engine(parsed, connect_args={"timeout": 30}, **pool)
        _sqlite_serialised_writes(engine)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            f"PLANGATE_DATABASE_URL: {parsed.get_backend_name()} is not a store plangate "
            "supports; use sqlite:///path/plangate.db or postgresql+psycopg://user@host/db"
        )
    try:
        # No ping before each transaction (a round trip on every one): a connection found dead
        # fails its transaction as an outage (`is_outage`), which the stages wait out, and
        # SQLAlchemy then drops every pooled connection as old as it, so one failure per
        # database restart, not one per pooled connection (nor per kept one: `kept_sessions`).
        # Room in the pool beyond SQLAlchemy's default for the connections threads keep.
        # A server that takes the connection and never answers (stopped, its packets
        # dropped) held a starting worker for ever, deaf to SIGTERM: connecting gives up.
        options = {**POSTGRES_OPTIONS, "application_name": process_name()}  # pg_stat_activity
        return create_engine(
            parsed,
            max_overflow=10 + MAX_KEPT_ON_POSTGRES,
            connect_args={k: v for k, v in options.items() if k not in parsed.query},
        )
    except ImportError as exc:  # a driver named in the URL that is not installed
        raise ConfigError(
            f"PLANGATE_DATABASE_URL names the driver {parsed.drivername}, which is not "
            f"installed ({exc.name}); use postgresql+psycopg:// (installed with plangate)"
        ) from exc


def open_store(url: str, *, upgrade: bool = True, create: bool | None = None) -> Store:
    """Open the store at a SQLAlchemy URL.

    With `upgrade` (the embedded mode) the schema is migrated to the newest revision; without
    it (workers) an old schema is refused with what to run. A SQLite file is created only with
    `create` (by default: with `upgrade`).
    """
    engine = make_engine(url, create=upgrade if create is None else create)
    try:
        with said_plainly(engine):
            if upgrade:
                schema.upgrade(engine)
            else:
                schema.require_current(engine)
    except BaseException:
        engine.dispose()
        raise
    if _on_sqlite_file(engine.url):
        return Store(engine, kept_threads=MAX_KEPT)
    if engine.dialect.name == "postgresql":
        return Store(engine, kept_threads=POSTGRES_BUDGET)
    return Store(engine)


def migrate_store(url: str) -> tuple[str | None, str]:
    """Migrate the store at a SQLAlchemy URL to the newest schema; return (before, after)."""
    engine = make_engine(url)
    try:
        with said_plainly(engine):
            return schema.upgrade(engine)
    finally:
        engine.dispose()


def require_store_schema(url: str) -> str:
    """Return the schema revision of the store at a SQLAlchemy URL, if it is this plangate's.

    Only reads (a SQLite file is not created); ConfigError, naming the revision found and what
    to do, if it is older or newer.
    """
    engine = make_engine(url, create=False)
    try:
        with said_plainly(engine):
            schema.require_current(engine)
    finally:
        engine.dispose()
    return schema.head_revision()


@contextmanager
def said_plainly(engine: Engine) -> Iterator[None]:
    """Turn the database's refusal to open (unreachable, not plangate's) into what to do."""
    try:
        yield
    except SQLAlchemyError as exc:
        where = shown_url(engine.url)
        cause = failure_cause(exc)
        check = _unwritable_folder(engine.url) or what_to_do(exc)
        raise ConfigError(f"cannot open the store at {where}: {cause}; {check}") from exc


def _unwritable_folder(url: URL) -> str | None:
    """Say what to do if a SQLite store's folder cannot be written, else None.

    SQLite writes beside its file (the write-ahead log's index) even to read it: a backup
    mounted read-only was refused as "unable to open database file", pointing at the URL.
    """
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    folder = Path(url.database).parent
    if not folder.is_dir() or os.access(folder, os.W_OK):
        return None
    return (
        f"its folder {folder} cannot be written (a read-only file system, or its permissions), "
        "and SQLite writes beside its file even to read it: copy the folder somewhere "
        "writable (`cp -a`) and read it there, or make it writable"
    )


def shown_url(url: URL) -> str:
    """Return a database URL as it may be shown: every password hidden, the query's too.

    `render_as_string(hide_password=True)` hides the user's alone: `?password=` (libpq's own
    spelling, or `sslpassword`) reached `/readyz`, which answers anyone on its network.
    """
    query = {key: "***" if "password" in key.lower() else value for key, value in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def is_outage(error: BaseException) -> bool:
    """Return True when `error` means the database is unreachable, not that a query is wrong."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError | InterfaceError | DisconnectionError)


def failure_cause(error: BaseException) -> str:
    """Return the database's own words for a failure (its driver's first line, redacted).

    Not SQLAlchemy's text, which quotes the statement and its parameters (goal texts, tool
    outputs) and ends in a link: "database or disk is full", "no such table: audit_log".
    """
    text = str(getattr(error, "orig", None) or error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return redact(first[:300])
