"""The threads tool calls run in: daemon threads, each reused once its call has returned.

A tool call runs in a thread of its own so that its deadline can be kept without stopping it
(Python cannot stop a thread): a call stuck past its deadline keeps its thread, never a step
slot, and never blocks the process's exit, because the thread is a daemon. Starting a thread
for every call cost ~110 µs of CPU and a wake-up on the step's path; a thread whose call
returned waits here for the next one instead. `concurrent.futures` cannot do this: its threads
are joined at exit, so one stuck call would hang every shutdown.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable

# Idle threads kept beyond this many exit: a burst of parallel steps does not leave them all.
MAX_IDLE = 16
_Job = Callable[[], None]


class ToolThreads:
    """Runs each job in an idle daemon thread, or a new one when none is idle."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self._max_idle = max_idle
        self._idle: list[queue.SimpleQueue[_Job]] = []
        self._lock = threading.Lock()

    def start(self, job: _Job, name: str) -> None:
        """Start `job` in a thread named `name`, in a copy of the caller's context; return.

        `job` must raise nothing: the caller hands its outcome back itself.
        """
        run = contextvars.copy_context().run
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), daemon=True).start()
        inbox.put(lambda: _named(name, lambda: run(job)))

    def _serve(self, inbox: queue.SimpleQueue[_Job]) -> None:
        while True:
            inbox.get()()
            with self._lock:
                if len(self._idle) >= self._max_idle:
                    return
                self._idle.append(inbox)


def _named(name: str, job: _Job) -> None:
    """Run `job` with the current thread named `name` (what a stack dump or a log shows)."""
    threading.current_thread().name = name
    job()
