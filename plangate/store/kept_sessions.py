"""Write transactions on a connection and a Session that each thread keeps.

A transaction made the usual way (a Session from a sessionmaker; a connection checked out of
the pool, reset and checked in again) cost about 70 µs of CPU, several times SQLite's own BEGIN
and COMMIT, and every goal takes six or seven write transactions on its way
(`bench/transactions.py`). So each thread that writes keeps one of the pool's connections for
good (`make_engine` gives the pool room for them), with a Session bound to it; a transaction is
that Session's begin and commit, as before. On SQLite a connection is an open file; on
PostgreSQL it is a server's connection, so fewer threads keep one (`MAX_KEPT_ON_POSTGRES`) and
the pool keeps its bound on the rest. A kept connection the server dropped fails its
transaction, as a pooled one would, and its thread opens a new one for the next.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

# Threads beyond this many (a web server's request threads) use the shared pool, as before.
MAX_KEPT = 32
# A worker's handler threads and its few background ones; each is a server connection, so
# this is for all of a process's stores together (`serve` opens two).
MAX_KEPT_ON_POSTGRES = 8

_ALL: weakref.WeakSet[KeptSessions] = weakref.WeakSet()
_PARENTS: list[object] = []  # in a forked child: the parent's kept state, left untouched


@dataclass(eq=False)
class _Kept:
    """One thread's connection and the Session bound to it."""

    connection: Connection
    session: Session
    lost: int  # how many connections had been found lost when this one was made
    busy: bool = False  # in a transaction: a nested one takes a pooled session


class KeptBudget:
    """How many connections may be kept: by one store, or by all of a process's stores."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._taken = 0
        self._guard = threading.Lock()

    def take(self) -> bool:
        """Take one connection's place; False if none is left."""
        with self._guard:
            if self._taken >= self.most:
                return False
            self._taken += 1
            return True

    def give(self, count: int = 1) -> None:
        """Give back the places of `count` connections closed."""
        with self._guard:
            self._taken = max(0, self._taken - count)

    def restart(self) -> None:
        """Start from none (a forked child keeps none of its parent's connections)."""
        with self._guard:
            self._taken = 0


# Shared by every PostgreSQL store of this process.
POSTGRES_BUDGET = KeptBudget(MAX_KEPT_ON_POSTGRES)


class KeptSessions:
    """Write transactions on each thread's own connection and Session."""

    def __init__(
        self, engine: Engine, pooled: sessionmaker[Session], most: int | KeptBudget = MAX_KEPT
    ) -> None:
        """Keep connections of `engine`'s pool for `most` threads; `pooled` serves the rest.

        `most`: a number for this store alone, or a budget shared with other stores.
        """
        self._engine = engine
        self._pooled = pooled
        self._budget = most if isinstance(most, KeptBudget) else KeptBudget(most)
        self._start()
        event.listen(engine, "handle_error", self._on_engine_error)
        _ALL.add(self)

    def _start(self) -> None:
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: set[Connection] = set()
        self._busy: set[Connection] = set()  # in a transaction: `close` leaves them to it
        # Connections found lost (a server restart drops them all): every thread's connection
        # made before the last loss is given back, not tried, so a restart fails one
        # transaction, not one per thread (as SQLAlchemy's pool does for its own).
        self._lost = 0
        # Connections of threads that ended, to give back. A thread's state is found gone by
        # the garbage collector, which may run in any thread, even one holding `_guard`: the
        # finalizer only appends here (no lock), and the next thread to connect gives them back.
        self._ended: list[Connection] = []
        self._finalizers: list[weakref.finalize[[Connection], _Kept]] = []
        self._closed = False

    @property
    def kept(self) -> int:
        """How many threads' connections are open."""
        self._give_back_ended()
        with self._guard:
            return len(self._connections)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """Open a transaction: commit when the block ends, roll back if it raises."""
        kept = self._this_threads()
        if kept is None or kept.busy or not self._take(kept):
            # Nested in this thread's own transaction (it begins lazily, as any Session's
            # does), one thread too many, or closed meanwhile: a session of the pool.
            with self._pooled.begin() as session:
                yield session
            return
        try:
            with kept.session.begin():
                yield kept.session
        except BaseException:
            if kept.connection.invalidated or kept.connection.closed:
                self._forget(kept)  # the next transaction of this thread opens a new one
            raise
        finally:
            # As a closed session's: what it loaded is detached, nothing carries over.
            kept.session.close()
            kept.session.info.clear()
            self._let_go(kept)

    def close(self) -> None:
        """Give back every kept connection; transactions from now on use the pool.

        A connection in a transaction is given back by its thread when the transaction ends
        (on SQLite the caller holds the write lock, so none is; PostgreSQL has no such lock).
        """
        with suppress(Exception):  # (not listening: closed before)
            event.remove(self._engine, "handle_error", self._on_engine_error)
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections - self._busy, set()
            finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:
            finalizer.detach()  # nor may a thread's state keep this store's engine alive
        self._local = threading.local()
        self._give_back_ended()
        for connection in connections:
            _close(connection)
        self._budget.give(len(connections))

    def _take(self, kept: _Kept) -> bool:
        """Mark the thread's connection in a transaction; False if the store closed meanwhile."""
        with self._guard:
            if self._closed:
                return False
            kept.busy = True
            self._busy.add(kept.connection)
            return True

    def _let_go(self, kept: _Kept) -> None:
        """Mark the transaction ended; give the connection back if the store closed meanwhile."""
        with self._guard:
            kept.busy = False
            self._busy.discard(kept.connection)
            closed = self._closed
        if closed:  # closed for good: the store's pool may be gone (`Engine.dispose`)
            with suppress(Exception):
                kept.connection.detach()
            _close(kept.connection)
            self._budget.give()

    def _on_engine_error(self, context: ExceptionContext) -> None:
        # Whichever connection of the engine found it (a kept one, a pooled reader's), a lost
        # connection means the kept ones made before it are likely lost too.
        if context.is_disconnect:
            with self._guard:
                self._lost += 1

    def _this_threads(self) -> _Kept | None:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None and not kept.connection.closed:
            if kept.lost == self._lost or kept.busy:  # (busy: this thread's outer transaction)
                return kept
            self._forget(kept)  # made before a connection was found lost: likely lost too
        # None yet, or closed by `close` (a store may be used after it, as an engine may be
        # after `dispose`: from the pool). A forked child starts afresh (`_after_fork_in_child`).
        self._local.kept = None
        self._give_back_ended()
        if self._closed or not self._budget.take():
            return None
        try:
            connection = self._engine.connect()  # not under `_guard`: it may run a collection
        except BaseException:
            self._budget.give()
            raise
        with self._guard:
            added = not self._closed
            if added:
                self._connections.add(connection)
        if not added:  # closed meanwhile
            _close(connection)
            self._budget.give()
            return None
        kept = _Kept(connection, Session(bind=connection, expire_on_commit=False), self._lost)
        # A thread that ends takes its thread-local state along: its connection is given back.
        finalizer = weakref.finalize(kept, self._ended.append, connection)
        with self._guard:
            self._finalizers.append(finalizer)
        self._local.kept = kept
        return kept

    def _forget(self, kept: _Kept) -> None:
        self._local.kept = None
        self._ended.append(kept.connection)
        self._give_back_ended()

    def _give_back_ended(self) -> None:
        while self._ended:
            connection = self._ended.pop()
            with self._guard:
                if connection not in self._connections:
                    continue  # given back already (by `close`)
                self._connections.discard(connection)
                self._finalizers = [f for f in self._finalizers if f.alive]
            _close(connection)
            self._budget.give()

    def _after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: neither used nor closed (nor collected,
        # which would give them back to the pool) here.
        for finalizer in self._finalizers:
            finalizer.detach()
        _PARENTS.append((self._local, self._connections))
        self._start()
        self._budget.restart()


def _close(connection: Connection) -> None:
    with suppress(Exception):  # closing is tidying up; an error here changes nothing
        connection.close()


def _after_fork_in_child() -> None:
    for kept in list(_ALL):
        kept._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
