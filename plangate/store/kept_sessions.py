"""SQLite write transactions on a connection and a Session that each thread keeps.

A transaction made the usual way (a Session from a sessionmaker; a connection checked out of
the pool, reset and checked in again) cost about 70 µs of CPU, several times SQLite's own BEGIN
and COMMIT, and every goal takes seven write transactions on its way: in one process, in turns,
a goal took 8 % less CPU and 8 % less time with the connection and Session kept. On SQLite a
connection is an open file, not a server's scarce resource, so each thread that writes keeps
one of the pool's for good (`make_engine` gives the pool room for them), with a Session bound
to it; a transaction is that Session's begin and commit, as before. PostgreSQL keeps the pool
as it was, and the bound it puts on a server's connections.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

# Threads beyond this many (a web server's request threads) use the shared pool, as before.
MAX_KEPT = 32


@dataclass(eq=False)
class _Kept:
    """One thread's connection and the Session bound to it."""

    connection: Connection
    session: Session
    busy: bool = False  # in a transaction: a nested one takes a pooled session


class KeptSessions:
    """Write transactions on each thread's own connection and Session (SQLite)."""

    def __init__(self, engine: Engine, pooled: sessionmaker[Session], most: int = MAX_KEPT) -> None:
        """Keep connections of `engine`'s pool, for `most` threads; `pooled` serves the rest."""
        self._engine = engine
        self._pooled = pooled
        self._most = most
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: set[Connection] = set()
        self._closed = False

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """Open a transaction: commit when the block ends, roll back if it raises."""
        kept = self._this_threads()
        if kept is None or kept.busy:
            # Nested in this thread's own transaction (it begins lazily, as any Session's
            # does), or one thread too many: a session of the pool, as before.
            with self._pooled.begin() as session:
                yield session
            return
        kept.busy = True
        try:
            with kept.session.begin():
                yield kept.session
        except BaseException:
            if kept.connection.invalidated or kept.connection.closed:
                self._forget(kept)  # the next transaction of this thread opens a new one
            raise
        finally:
            kept.busy = False
            # As a closed session's: what it loaded is detached, nothing carries over.
            kept.session.close()
            kept.session.info.clear()

    @property
    def kept(self) -> int:
        """How many threads' connections are open."""
        with self._guard:
            return len(self._connections)

    def close(self) -> None:
        """Close every kept connection; transactions from now on use the pool."""
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close(connection)

    def _this_threads(self) -> _Kept | None:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None and not kept.connection.closed:
            return kept
        # None yet, or closed by `close` (the store may be used after it, as an engine may be
        # after `dispose`: from the pool).
        with self._guard:
            if self._closed or len(self._connections) >= self._most:
                return None
            connection = self._engine.connect()
            self._connections.add(connection)
        kept = _Kept(connection, Session(bind=connection, expire_on_commit=False))
        # A thread that ends takes its thread-local state along: its connection is closed.
        weakref.finalize(kept, self._release, connection)
        self._local.kept = kept
        return kept

    def _forget(self, kept: _Kept) -> None:
        self._local.kept = None
        self._release(kept.connection)

    def _release(self, connection: Connection) -> None:
        with self._guard:
            if connection not in self._connections:
                return  # closed already (by `close`, or forgotten)
            self._connections.discard(connection)
        _close(connection)


def _close(connection: Connection) -> None:
    with suppress(Exception):  # closing is tidying up; an error here changes nothing
        connection.close()
