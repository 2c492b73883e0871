"""Does a second and a fourth executor process add throughput? On PostgreSQL, I/O-bound tools.

For 1, 2 and 4 executor processes (each handling one goal at a time), with one planner and one
gate: a batch of goals submitted at once, timed until the last one completes; goals/s, and each
as a multiple of one executor's. The tools wait 50 ms each (`waiting_tools.py`): executors
spend their time waiting, so what holds added ones back is what they share, the store above
all (every auditing transaction once locked one row).

    python bench/scaling.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from kombu import Connection, Exchange

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from harness import Arrivals, Processes, Side, observer_queue, say, start_redis  # noqa: E402
from pipeline import SEED_GOAL, TERMINAL_KEYS, plangate_env, upgrade_store  # noqa: E402

from plangate.client import Client  # noqa: E402
from plangate.config import Settings  # noqa: E402

EXECUTORS = (1, 2, 4)
TWO_TARGET, FOUR_TARGET = 1.8, 3.2  # issue 19: 2 executors >= 1.8x, 4 >= 3.2x the goals/s of 1


def run(args: argparse.Namespace, processes: Processes, broker_url: str, executors: int) -> float:
    """Start the workers with `executors` executor processes; return the batch's goals/s."""
    settings = Settings(
        broker_url=broker_url,
        database_url=args.database_url,
        data_dir=processes.folder / "data",
        namespace=f"scale{uuid.uuid4().hex[:8]}",
    )
    env = plangate_env(settings) | {"PLANGATE_TOOLS": "waiting_tools"}
    worker = [sys.executable, "-m", "plangate", "worker"]
    processes.start("planner", [*worker, "planner", "--concurrency", "4"], env)
    processes.start("gate", [*worker, "gate", "--concurrency", "4"], env)
    for n in range(executors):
        processes.start(f"executor{n}", [*worker, "executor", "--concurrency", "1"], env)
    exchange = Exchange(settings.namespace, type="topic", durable=True)
    try:
        with Connection(broker_url) as connection, Client(settings) as client:
            done = Arrivals(
                connection, observer_queue(exchange, f"{settings.namespace}.done", TERMINAL_KEYS)
            )
            side = Side(
                f"{executors} executor(s)",
                lambda: client.submit(SEED_GOAL).goal_id,
                done,
                processes.check_alive,
            )
            for _ in range(3):
                side.one(record=False)
            side.batch(args.goals)
            if side.outcomes() != {"execution.completed"}:
                raise RuntimeError(f"goals ended as {side.outcomes()}, not all completed")
            done.close()
            return side.rate
    finally:
        processes.stop(lambda name: name != "redis")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL for plangate's store")
    parser.add_argument("--goals", type=int, default=60, help="goals per batch (default 60)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="plangate-scaling-"))
    processes = Processes(folder)
    try:
        broker_url = start_redis(processes)
        upgrade_store(Settings(database_url=args.database_url, data_dir=folder / "data"))
        rates = {n: run(args, processes, broker_url, n) for n in EXECUTORS}
    except (RuntimeError, TimeoutError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        processes.stop()
        shutil.rmtree(folder, ignore_errors=True)
    one = rates[1]
    print(f"\n{args.goals} goals per batch, tools waiting 50 ms each, PostgreSQL store")
    targets = {1: None, 2: TWO_TARGET, 4: FOUR_TARGET}
    for n, rate in rates.items():
        target = targets[n]
        met = (
            ""
            if target is None
            else f"  target >= {target}x: {'met' if rate / one >= target else 'NOT met'}"
        )
        print(f"  {n} executor(s)  {rate:6.1f} goals/s  {rate / one:4.2f}x one{met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
