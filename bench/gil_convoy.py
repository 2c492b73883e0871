"""A SQLite write transaction's wall time, alone and beside threads of its process that run Python.

SQLite lets go of the GIL for each statement; getting it back from a thread busy running Python
takes at least `sys.getswitchinterval()` (5 ms by default), more with several busy threads. So
a transaction of a few statements, in a worker whose other handler threads are busy, holds
SQLite's write lock (which every writer of every process waits for) many times as long as its
own work. This prints the median wall time of one transaction (a goal added, then eight updates
of it, through the store's ORM session) with 0, 1 and 3 busy threads beside it, at the default
switch interval and at a tenth of it.

    python bench/gil_convoy.py [--transactions 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid

from sqlalchemy import update

from plangate.store import GoalRow, Store, open_store


def transaction(store: Store) -> None:
    goal_id = uuid.uuid4().hex
    with store.session() as session:
        session.add(GoalRow(id=goal_id, text="count tickets", status="submitted", meta={}))
        session.flush()
        for _ in range(8):
            session.execute(update(GoalRow).where(GoalRow.id == goal_id).values(status="x"))


def busy(stop: threading.Event) -> None:
    """Run Python until told to stop, as a handler validating or signing does."""
    total = 0
    while not stop.is_set():
        total += sum(range(1000))


def median_wall_ms(store: Store, threads: int, count: int) -> float:
    stop = threading.Event()
    others = [threading.Thread(target=busy, args=(stop,)) for _ in range(threads)]
    for other in others:
        other.start()
    try:
        walls = []
        for _ in range(count):
            started = time.perf_counter()
            transaction(store)
            walls.append(time.perf_counter() - started)
        return statistics.median(walls) * 1e3
    finally:
        stop.set()
        for other in others:
            other.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=200, help="per row of the table")
    count = parser.parse_args().transactions
    default = sys.getswitchinterval()
    print("median wall ms of one transaction (a goal added, then 8 updates)")
    heads = [f"switch {interval * 1e3:g} ms" for interval in (default, default / 10)]
    print(f"{'busy threads beside it':24}{heads[0]:>14}{heads[1]:>16}")
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as folder:
        store = open_store(f"sqlite:///{folder}/plangate.db")
        try:
            for threads in (0, 1, 3):
                figures = []
                for interval in (default, default / 10):
                    sys.setswitchinterval(interval)
                    figures.append(median_wall_ms(store, threads, count))
                sys.setswitchinterval(default)
                print(f"{threads:<24}{figures[0]:14.2f}{figures[1]:16.2f}")
        finally:
            store.close()


if __name__ == "__main__":
    main()
