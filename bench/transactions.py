"""A SQLite write transaction: on the Session and connection a thread keeps, or made each time.

`Store.session()` on a SQLite file runs each transaction on a connection and a Session its
thread keeps (`plangate/store/kept_sessions.py`); before, each transaction made a Session and
checked a connection out of the pool and in again. Both sides run in one process, in turns:

- one transaction of one plain statement, through each way: CPU microseconds per transaction;
- whole seed goals in the embedded mode (memory broker, the same store), each way in turn
  (the store's way of opening a transaction is switched between batches): CPU milliseconds
  per goal and the p50 of its latency.

Printed: the median of the runs for each side, and the ratio.

    python bench/transactions.py [--transactions 3000] [--goals 50] [--runs 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from embedded import one_goal, pipeline
from harness import per_call, say
from sqlalchemy import literal, select

from plangate.store import Store
from plangate.store.hot_statements import HotStatement

_ONE = HotStatement(select(literal(1)))
SIDES = ("made each time", "kept by the thread")


def _ways(store: Store) -> dict[str, Callable[[], object]]:
    kept = store._kept
    if kept is None:
        raise SystemExit("this store keeps no connections: it is not a SQLite file")
    return {SIDES[0]: store._sessions.begin, SIDES[1]: kept.begin}


def transaction_cpu(store: Store, count: int, runs: int) -> dict[str, list[float]]:
    """CPU µs of one transaction of one statement, each way, `runs` times in turns."""
    ways = _ways(store)
    found: dict[str, list[float]] = {side: [] for side in SIDES}

    def one(side: str) -> Callable[[], None]:
        begin = ways[side]

        def transaction() -> None:
            with store._writers, begin() as session:
                _ONE.rows(session, {})

        return transaction

    for run in range(runs):
        for side in SIDES if run % 2 == 0 else SIDES[::-1]:
            cpu, _wall = per_call(one(side), count)
            found[side].append(cpu * 1e6)
    return found


def goal_figures(folder: Path, goals: int, runs: int) -> dict[str, list[tuple[float, float]]]:
    """CPU ms per goal and p50 ms of `goals` embedded goals, each way, `runs` times in turns."""
    found: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    with pipeline(folder, "transactions", "memory://") as running:
        store = running.store
        ways = _ways(store)
        for _ in range(5):
            one_goal(running)  # warm up
        for run in range(runs):
            for side in SIDES if run % 2 == 0 else SIDES[::-1]:
                store._begin = ways[side]
                started = time.process_time()
                latencies = [one_goal(running) for _ in range(goals)]
                cpu = (time.process_time() - started) / goals * 1e3
                found[side].append((cpu, statistics.median(latencies) * 1e3))
        store._begin = ways[SIDES[1]]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=3000, help="per side and run")
    parser.add_argument("--goals", type=int, default=50, help="per side and run")
    parser.add_argument("--runs", type=int, default=6, help="runs per side, in turns")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as folder:
        say(f"transactions: {args.transactions} per side and run, {args.runs} runs in turns")
        with pipeline(Path(folder) / "one", "transactions", "memory://") as running:
            per_transaction = transaction_cpu(running.store, args.transactions, args.runs)
        say(f"goals: {args.goals} per side and run, {args.runs} runs in turns")
        per_goal = goal_figures(Path(folder) / "goals", args.goals, args.runs)
    print()
    heads = ("transaction CPU (µs)", "goal CPU (ms)", "p50 (ms)")
    print(f"{'median of the runs':34} {heads[0]:>21} {heads[1]:>14} {heads[2]:>9}")
    for side in SIDES:
        tx = statistics.median(per_transaction[side])
        cpu = statistics.median(cpu for cpu, _ in per_goal[side])
        p50 = statistics.median(p50 for _, p50 in per_goal[side])
        print(f"  {side:32} {tx:21.1f} {cpu:14.2f} {p50:9.2f}")
    ratio = [
        statistics.median(per_transaction[SIDES[1]]) / statistics.median(per_transaction[SIDES[0]]),
        statistics.median(c for c, _ in per_goal[SIDES[1]])
        / statistics.median(c for c, _ in per_goal[SIDES[0]]),
        statistics.median(p for _, p in per_goal[SIDES[1]])
        / statistics.median(p for _, p in per_goal[SIDES[0]]),
    ]
    print(f"  {'kept / made each time':32} {ratio[0]:20.2f}x {ratio[1]:13.2f}x {ratio[2]:8.2f}x")


if __name__ == "__main__":
    main()
