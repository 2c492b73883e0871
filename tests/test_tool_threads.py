"""The threads tool calls run in: reused once a call returns, never blocked by a stuck one."""

from __future__ import annotations

import contextvars
import threading

from executor_worker.tool_threads import ToolThreads

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def run_and_wait(threads: ToolThreads, job_name: str) -> tuple[int, str, str]:
    """Start a job; return the thread it ran in, that thread's name, and the context it saw."""
    seen: list[tuple[int, str, str]] = []
    done = threading.Event()

    def job() -> None:
        current = threading.current_thread()
        seen.append((current.ident or 0, current.name, WHO.get()))
        done.set()

    threads.start(job, job_name)
    assert done.wait(5)
    return seen[0]


def test_a_thread_whose_call_returned_runs_the_next_call_in_the_callers_context() -> None:
    """Given a call that returned, when the next one starts, then it runs in the same daemon
    thread, under its own name, with the context of the code that started it.
    """
    threads = ToolThreads()
    WHO.set("step count")
    first = run_and_wait(threads, "plangate-tool-count")
    WHO.set("step notify")
    second = run_and_wait(threads, "plangate-tool-notify")

    assert second[0] == first[0]
    assert (first[1:], second[1:]) == (
        ("plangate-tool-count", "step count"),
        ("plangate-tool-notify", "step notify"),
    )


def test_a_call_stuck_past_its_deadline_keeps_its_thread_and_delays_no_other() -> None:
    """Given a call that never returns, when another call starts, then it runs at once in
    another thread (the stuck one is a daemon: it does not hold up the process's exit).
    """
    threads = ToolThreads()
    release, started = threading.Event(), threading.Event()
    stuck_in: list[threading.Thread] = []

    def stuck() -> None:
        stuck_in.append(threading.current_thread())
        started.set()
        release.wait(10)

    threads.start(stuck, "plangate-tool-stuck")
    try:
        assert started.wait(5)  # the call is under way (its thread may start after `start`)
        other = run_and_wait(threads, "plangate-tool-other")
        assert stuck_in[0].daemon
        assert other[0] != stuck_in[0].ident
    finally:
        release.set()
