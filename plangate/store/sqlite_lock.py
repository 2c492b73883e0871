"""SQLite's one write lock, handed from transaction to transaction without polling.

A SQLite writer that finds the database locked sleeps and tries again (after 1, 2, 5, 10, 15,
20, 25 ... ms); with several worker processes writing, those sleeps come to far more than the
transactions themselves. So each transaction first takes an advisory lock (`flock`) on a file
beside the database: the kernel wakes the next waiter, in whichever process, the moment the
holder is done, and releases the lock of a process that dies. Threads of one process queue on a
plain lock first, because `flock` belongs to an open file, not to a thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads are still serialised
    fcntl = None  # type: ignore[assignment]


class SqliteWriteLock:
    """A reentrant lock held around every transaction on one SQLite database."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0  # nested sessions of the thread that holds `_threads`
        self._fd: int | None = None
        if fcntl is not None and database and database != ":memory:":
            self._fd = os.open(f"{Path(database)}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._depth == 0 and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        """Close the lock file (a lock still held is released with it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
