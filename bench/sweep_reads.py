"""What a worker's sweep reads of the broker: a connection per read, or one kept across sweeps.

Every sweep (every 5 s, in every worker) asks how many messages wait in each stage's queue and,
on Redis, which goals a consumer holds. It opened a connection for each of those four reads;
now it keeps one (`plangate.bus.broker_view.BrokerView`). Both sides make the same reads
through plangate's `Bus` on one Redis, in turns, in one process. Printed: CPU and wall
milliseconds per sweep, best of the runs, and the connections Redis accepted per sweep.

    python bench/sweep_reads.py [--redis-url URL] [--sweeps 50] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from harness import Processes, forget_namespace, per_call, say, start_redis

from plangate.bus import STAGES, Bus
from plangate.bus.broker_view import BrokerView


def reads(source: Bus | BrokerView) -> None:
    """One sweep's reads of the broker."""
    source.held_goal_ids()
    for stage in STAGES:
        source.queue_depth(stage)


def measure(sweep: Callable[[], None], server: redis.Redis, count: int) -> tuple[float, ...]:
    """Return CPU ms, wall ms and connections accepted, per sweep."""
    accepted = server.info("stats")["total_connections_received"]
    cpu, wall = per_call(sweep, count)
    connections = (server.info("stats")["total_connections_received"] - accepted) / count
    return cpu * 1e3, wall * 1e3, connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--sweeps", type=int, default=50, help="per side and run")
    parser.add_argument("--runs", type=int, default=5, help="runs per side, in turns")
    args = parser.parse_args()
    best: dict[str, tuple[float, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as folder:
        processes = Processes(Path(folder))
        try:
            url = args.redis_url or start_redis(processes)
            namespace = f"bench{uuid.uuid4().hex[:8]}"
            bus = Bus(url, namespace=namespace)
            try:
                bus.declare()
                with redis.Redis.from_url(url) as server, bus.view() as view:
                    sides: dict[str, Callable[[], None]] = {
                        "a connection per read": lambda: reads(bus),
                        "one kept connection": lambda: reads(view),
                    }
                    for _ in range(args.runs):
                        for name, sweep in sides.items():
                            figures = measure(sweep, server, args.sweeps)
                            kept = best.get(name, figures)
                            best[name] = tuple(map(min, zip(kept, figures, strict=True)))
                    say(f"{args.runs} runs of each side done")
            finally:
                bus.close()
                forget_namespace(url, namespace)
        finally:
            processes.stop()
    print(f"\n{'per sweep (best of runs)':30}{'CPU ms':>8}{'wall ms':>9}{'connections':>13}")
    for name, (cpu, wall, connections) in best.items():
        print(f"  {name:28}{cpu:8.2f}{wall:9.2f}{connections:13.1f}")


if __name__ == "__main__":
    main()
