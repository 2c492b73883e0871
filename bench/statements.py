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
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from embedded import WARMUP_GOALS, one_goal, pipeline  # noqa: E402
from sqlalchemy import event  # noqa: E402

from plangate.store import hot_statements, sqlite_lock  # noqa: E402
from plangate.store.engine import READS_ONLY  # noqa: E402


def stage_of(thread: threading.Thread) -> str:
    """Name the stage a thread works for (the embedded mode names its threads after them)."""
    name = thread.name.removeprefix("plangate-")
    for stage in ("planner", "gate", "executor"):
        if stage in name:
            return stage
    if name.startswith(("step", "tool-")):
        return "executor"
    return "client" if thread is threading.main_thread() else name


class Counts:
    """Statements, transactions and CPU in SQLite's write lock, by stage, while `counting`."""

    def __init__(self, show: bool) -> None:
        self.statements: collections.Counter[str] = collections.Counter()
        self.transactions: collections.Counter[str] = collections.Counter()
        self.writes: collections.Counter[str] = collections.Counter()
        self.held: collections.Counter[str] = collections.Counter()  # CPU seconds in the lock
        self.shown: list[str] | None = [] if show else None
        self.counting = threading.Event()
        self._taken = threading.local()

    def time_the_write_lock(self) -> None:
        """Count the CPU each stage spends holding SQLite's one write lock.

        Every writing transaction holds it from its first line to its commit: across
        processes, its total per goal bounds the goals per second.
        """
        enter, leave = sqlite_lock.SqliteWriteLock.__enter__, sqlite_lock.SqliteWriteLock.__exit__

        def timed_enter(lock: sqlite_lock.SqliteWriteLock) -> None:
            enter(lock)
            if lock._depth == 1:
                self._taken.at = time.thread_time()

        def timed_leave(lock: sqlite_lock.SqliteWriteLock, *exc: Any) -> None:
            if lock._depth == 1 and self.counting.is_set():
                spent = time.thread_time() - self._taken.at
                self.held[stage_of(threading.current_thread())] += spent
            leave(lock, *exc)

        sqlite_lock.SqliteWriteLock.__enter__ = timed_enter  # type: ignore[method-assign]
        sqlite_lock.SqliteWriteLock.__exit__ = timed_leave  # type: ignore[method-assign]

    def count_hot_statements(self) -> None:
        """Count the statements run on SQLite's own cursor, which no engine event sees."""
        hot = hot_statements.HotStatement

        def counting(run: Callable[..., Any]) -> Callable[..., Any]:
            def counted(
                statement: hot_statements.HotStatement, session: Any, *arguments: Any
            ) -> Any:
                if self.counting.is_set():
                    stage = stage_of(threading.current_thread())
                    self.statements[stage] += 1
                    if self.shown is not None and len(self.shown) < 400:
                        sql = " ".join(str(statement._statement).split())
                        self.shown.append(f"{stage:<9} (on the driver's cursor) {sql[:120]}")
                return run(statement, session, *arguments)

            return counted

        hot._run = counting(hot._run)  # type: ignore[method-assign]

    def on_begin(self, connection: Any) -> None:
        """Count one transaction, and whether it writes (an engine's `begin` event)."""
        if self.counting.is_set():
            stage = stage_of(threading.current_thread())
            self.transactions[stage] += 1
            self.writes[stage] += not connection.get_execution_options().get(READS_ONLY, False)

    def on_statement(self, _conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        """Count one statement (an engine's `before_cursor_execute` event)."""
        if not self.counting.is_set():
            return
        stage = stage_of(threading.current_thread())
        self.statements[stage] += 1
        if self.shown is not None and len(self.shown) < 400:
            self.shown.append(f"{stage:<9} {' '.join(sql.split())[:150]}")

    def report(self, goals: int, cpu: float) -> None:
        """Print the counts per goal, by stage and in total."""
        print(f"per goal, over {goals} seed goals (embedded mode, SQLite; sweeps not counted)")
        print(
            f"  {'stage':<10} {'statements':>10} {'transactions':>13} {'of which write':>15} "
            f"{'CPU in write lock (ms)':>22}"
        )
        order = ("client", "planner", "gate", "executor")
        stages = sorted(self.statements, key=lambda s: order.index(s) if s in order else 9)
        rows = [(stage, stage) for stage in stages] + [("total", None)]
        for label, stage in rows:
            figures = [
                (counter[stage] if stage else sum(counter.values())) / goals
                for counter in (self.statements, self.transactions, self.writes, self.held)
            ]
            print(
                f"  {label:<10} {figures[0]:10.1f} {figures[1]:13.1f} {figures[2]:15.1f} "
                f"{figures[3] * 1000:22.2f}"
            )
        print(f"the process's CPU per goal (every thread): {cpu * 1000 / goals:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, default=20, help="goals to count over")
    parser.add_argument("--show", action="store_true", help="print each statement of one goal")
    args = parser.parse_args()
    counts = Counts(args.show)
    counts.time_the_write_lock()
    counts.count_hot_statements()
    with (
        tempfile.TemporaryDirectory() as folder,
        pipeline(Path(folder), "count", "memory://") as running,
    ):
        event.listen(running.store.engine, "before_cursor_execute", counts.on_statement)
        event.listen(running.store.engine, "begin", counts.on_begin)
        for _ in range(WARMUP_GOALS):
            one_goal(running)
        counts.counting.set()
        cpu = time.process_time()
        for _ in range(1 if counts.shown is not None else args.goals):
            one_goal(running)
        counts.counting.clear()
        cpu = time.process_time() - cpu
    if counts.shown is not None:
        print("\n".join(counts.shown))
    else:
        counts.report(args.goals, cpu)


if __name__ == "__main__":
    main()
