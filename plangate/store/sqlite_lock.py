"""SQLite's one write lock, handed from transaction to transaction without polling.

A SQLite writer that finds the database locked sleeps and tries again (after 1, 2, 5, 10, 15,
20, 25 ... ms); with several worker processes writing, those sleeps come to far more than the
transactions themselves. So each transaction first takes an advisory lock (`flock`) on a file
beside the database: the kernel wakes the next waiter, in whichever process, the moment the
holder is done, and releases the lock of a process that dies. Threads of one process queue on a
plain lock first, because `flock` belongs to an open file, not to a thread; and every store of a
process on the same file shares one lock, or two of them would lock each other out.

Every process of a deployment on one SQLite file takes turns in this lock, so the time it is
held bounds the goals per second of them all: each process reports how long its transactions
waited for it and held it (`plangate_sqlite_write_lock_*_seconds`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from types import TracebackType

from plangate import metrics

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads are still serialised
    fcntl = None  # type: ignore[assignment]

_SHARED: dict[str, SqliteWriteLock] = {}  # by the database file's real path
_SHARED_GUARD = threading.Lock()
_ALL: weakref.WeakSet[SqliteWriteLock] = weakref.WeakSet()


class SqliteWriteLock:
    """A reentrant lock held around every transaction on one SQLite database."""

    def __init__(self, path: str | None) -> None:
        self._path = path  # None: no file to lock (in memory), threads only
        self._users = 0
        self._fd: int | None = None
        self._open()
        _ALL.add(self)

    def _open(self) -> None:
        self._threads = threading.RLock()
        self._depth = 0  # nested sessions of the thread that holds `_threads`
        self._taken_at = 0.0  # when the thread that holds it took it (perf_counter)
        self._waited = 0.0  # how long that thread waited for it
        # The lock file is made by the first write, not here: a command that only reads
        # (`status`, `audit verify`) leaves nothing behind in the data folder.
        self._fd = None

    @property
    def threads(self) -> threading.RLock:
        """Return the lock of this process's threads: held, none of their transactions runs.

        Enough to close a store, and takes no file: a process that only read leaves none.
        """
        return self._threads

    def _file(self) -> int | None:
        """Return the open lock file, made at the first write (None: threads only)."""
        if self._fd is None and fcntl is not None and self._path is not None:
            self._fd = os.open(f"{self._path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> None:
        asked_at = time.perf_counter()
        self._threads.acquire()
        if self._depth == 0:
            try:
                fd = self._file()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
            self._taken_at = time.perf_counter()
            self._waited = self._taken_at - asked_at  # observed once the lock is let go
        self._depth += 1

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth > 0:
            self._threads.release()
            return
        held, waited = time.perf_counter() - self._taken_at, self._waited
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()
        # After letting go: every other writer waits for the lock, none for these.
        metrics.SQLITE_LOCK_HELD.observe(held)
        metrics.SQLITE_LOCK_WAITED.observe(waited)


def acquire_lock(database: str | None) -> SqliteWriteLock:
    """Return this process's write lock for a SQLite database file; `release_lock` it when done.

    None (no file: a database in memory, or a URI the store does not parse) gets a lock of its
    own that serialises this store's threads only.
    """
    if not database:
        unshared = SqliteWriteLock(None)  # nothing on disk to share
        unshared._users = 1
        return unshared
    path = os.path.realpath(database)
    with _SHARED_GUARD:
        lock = _SHARED.get(path)
        if lock is None:
            lock = _SHARED[path] = SqliteWriteLock(path)
        lock._users += 1
        return lock


def release_lock(lock: SqliteWriteLock) -> None:
    """Let go of a lock from `acquire_lock`; the last store to let go closes its file."""
    with _SHARED_GUARD:
        lock._users -= 1
        if lock._users > 0:
            return
        if lock._path is not None and _SHARED.get(lock._path) is lock:
            del _SHARED[lock._path]
    with lock._threads:  # after any transaction still running on it
        lock._close()


def _after_fork_in_child() -> None:
    """Give a forked child locks of its own, taken by none of the threads it did not inherit.

    It shares the parent's open lock files (and so the parent's `flock`), and a thread lock
    held by a parent thread at the fork stays held forever in the child.
    """
    global _SHARED_GUARD
    _SHARED_GUARD = threading.Lock()
    for lock in list(_ALL):
        lock._close()  # the child opens its own at its first write
        lock._open()


os.register_at_fork(after_in_child=_after_fork_in_child)
