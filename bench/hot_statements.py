"""A hot statement on the driver's own cursor beside the same statement through SQLAlchemy.

What a stage asks of its goal on every message (`SELECT status, status_reason FROM goals WHERE
id = ...`), run in one transaction of a migrated store, in turns: as `HotStatement` runs it
(compiled once, on `sqlite3`'s or psycopg's cursor) and as `Session.execute` runs it (compiled,
cached, through SQLAlchemy's execution context and result). Printed: CPU and wall microseconds
per statement, the median of the rounds, and the ratio.

    python bench/hot_statements.py [--database-url postgresql+psycopg://...] [--statements 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from plangate.store import GoalRow, open_store
from plangate.store.hot_statements import HotStatement

GOALS = cast(Table, GoalRow.__table__)
STATUS = select(GOALS.c.status, GOALS.c.status_reason).where(GOALS.c.id == bindparam("goal_id"))
HOT = HotStatement(STATUS)
PARAMS = {"goal_id": "no-such-goal"}
ROUNDS = 5


def per_statement(run: Callable[[], Any], count: int) -> tuple[float, float]:
    """Run `count` times; return the CPU and wall microseconds of one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        run()
    return (
        (time.process_time() - cpu) / count * 1e6,
        (time.perf_counter() - wall) / count * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="the store (default: SQLite in a temporary folder)")
    parser.add_argument("--statements", type=int, default=2000, help="statements per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/plangate.db"
        store = open_store(url)
        try:
            with store.session() as session:
                sides: dict[str, Callable[[Session], Any]] = {
                    "HotStatement (driver)": lambda s: HOT.rows(s, PARAMS),
                    "Session.execute": lambda s: s.execute(STATUS, PARAMS).all(),
                }
                figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
                for run in sides.values():  # warm up: compile, prepare
                    per_statement(lambda run=run: run(session), 50)
                for _ in range(ROUNDS):
                    for name, run in sides.items():
                        figures[name].append(
                            per_statement(lambda run=run: run(session), args.statements)
                        )
        finally:
            store.close()
    print(f"one status read, {args.statements} per round, {ROUNDS} rounds in turns, on {url}")
    base = statistics.median(cpu for cpu, _ in figures["Session.execute"])
    for name, measured in figures.items():
        cpu = statistics.median(c for c, _ in measured)
        wall = statistics.median(w for _, w in measured)
        print(f"  {name:<22} CPU {cpu:7.1f} µs   wall {wall:7.1f} µs   CPU {cpu / base:4.2f}x")


if __name__ == "__main__":
    main()
