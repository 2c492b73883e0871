"""SQL statements and transactions per goal, by stage: what the store does for one goal.

The embedded `Pipeline` (the stages as threads on one store, SQLite, the approve-all policy and
the instant tools of `pipeline.py`) runs the seed goal one at a time; the engine's events count
every statement and every transaction begun, by the thread (stage) that ran it. The count is
the same on PostgreSQL, whose workers run the same handlers; only their sweeps are left out.

    python bench/statements.py [--goals 20] [--show]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from embedded import WARMUP_GOALS, one_goal, pipeline  # noqa: E402
from sqlalchemy import event  # noqa: E402

from plangate.store import sqlite_lock  # noqa: E402


def stage_of(thread: threading.Thread) -> str:
    """Name the stage a thread works for (the embedded mode names its threads after them)."""
    name = thread.name.removeprefix("plangate-")
    for stage in ("planner", "gate", "executor"):
        if stage in name:
            return stage
    if name.startswith(("step", "tool-")):
        return "executor"
    return "client" if thread is threading.main_thread() else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, default=20, help="goals to count over")
    parser.add_argument("--show", action="store_true", help="print each statement of one goal")
    args = parser.parse_args()
    statements: collections.Counter[str] = collections.Counter()
    transactions: collections.Counter[str] = collections.Counter()
    writes: collections.Counter[str] = collections.Counter()
    shown: list[str] = []
    counting = threading.Event()
    held: collections.Counter[str] = collections.Counter()  # seconds in the write lock
    taken = threading.local()
    enter, leave = sqlite_lock.SqliteWriteLock.__enter__, sqlite_lock.SqliteWriteLock.__exit__

    def timed_enter(lock: sqlite_lock.SqliteWriteLock) -> None:
        enter(lock)
        if lock._depth == 1:
            taken.at = time.thread_time()

    def timed_leave(lock: sqlite_lock.SqliteWriteLock, *exc: Any) -> None:
        if lock._depth == 1 and counting.is_set():
            held[stage_of(threading.current_thread())] += time.thread_time() - taken.at
        leave(lock, *exc)

    # Every writing transaction holds SQLite's one write lock from its first line to its
    # commit: across processes, its total per goal bounds the goals per second.
    sqlite_lock.SqliteWriteLock.__enter__ = timed_enter  # type: ignore[method-assign]
    sqlite_lock.SqliteWriteLock.__exit__ = timed_leave  # type: ignore[method-assign]

    def on_statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if not counting.is_set():
            return
        stage = stage_of(threading.current_thread())
        if sql.startswith("BEGIN"):
            transactions[stage] += 1
            if sql == "BEGIN IMMEDIATE":
                writes[stage] += 1
            return
        statements[stage] += 1
        if args.show and len(shown) < 400:
            shown.append(f"{stage:<9} {' '.join(sql.split())[:150]}")

    with (
        tempfile.TemporaryDirectory() as folder,
        pipeline(Path(folder), "count", "memory://") as running,
    ):
        event.listen(running.store.engine, "before_cursor_execute", on_statement)
        for _ in range(WARMUP_GOALS):
            one_goal(running)
        counting.set()
        cpu = time.process_time()
        if args.show:
            one_goal(running)
            counting.clear()
            print("\n".join(shown))
            return
        for _ in range(args.goals):
            one_goal(running)
        counting.clear()
        cpu = time.process_time() - cpu
    goals = args.goals
    print(f"per goal, over {goals} seed goals (embedded mode, SQLite; sweeps not counted)")
    print(
        f"  {'stage':<10} {'statements':>10} {'transactions':>13} {'of which write':>15} "
        f"{'CPU in write lock (ms)':>22}"
    )
    order = ("client", "planner", "gate", "executor")
    for stage in sorted(statements, key=lambda s: order.index(s) if s in order else len(order)):
        print(
            f"  {stage:<10} {statements[stage] / goals:10.1f} {transactions[stage] / goals:13.1f} "
            f"{writes[stage] / goals:15.1f} {held[stage] * 1000 / goals:22.2f}"
        )
    total = sum(statements.values()) / goals
    print(
        f"  {'total':<10} {total:10.1f} {sum(transactions.values()) / goals:13.1f} "
        f"{sum(writes.values()) / goals:15.1f} {sum(held.values()) * 1000 / goals:22.2f}"
    )
    print(f"the process's CPU per goal (every thread): {cpu * 1000 / goals:.1f} ms")


if __name__ == "__main__":
    main()
