"""One publish on Redis: kombu's own topic routing beside plangate's routing script.

Both sides publish the same goal.submitted body through kombu's `Producer` onto one exchange,
bound as a plangate namespace is (every stage queue declared by `Bus.declare`, and one observer
of every type, as `plangate submit --wait` binds), in turns, in one process, on plangate's Redis
transport (its client kept per channel). One side routes as kombu does: it reads the binding
table and pushes onto each matched list (1 + n round trips); the other runs plangate's script
(`plangate/bus/redis_routing.py`), which does both in one. Printed: this process's CPU and the
wall time per publish, each the best of its runs, for a type a stage and the observer take
(goal.submitted) and for one only the observer takes (step.finished).

    python bench/publish.py [--redis-url URL] [--publishes 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from harness import Processes, forget_namespace, per_call, say, start_redis
from kombu import Connection, Exchange, Producer
from kombu.transport import redis as kombu_redis

from plangate.bus import Bus, Envelope
from plangate.bus.redis_transport import Channel, Transport
from schemas import GoalSubmitted, new_id

TYPES = ("goal.submitted", "step.finished")


class KombuRoutingChannel(Channel):
    """plangate's channel (its client kept, its entries checked) routing as kombu routes."""

    basic_publish = kombu_redis.Channel.basic_publish


class KombuRoutingTransport(Transport):
    """plangate's Redis transport but for the routing script: the baseline side."""

    Channel = KombuRoutingChannel


SIDES: dict[str, type[kombu_redis.Transport]] = {
    "kombu's routing": KombuRoutingTransport,
    "plangate's script": Transport,
}


def measure(
    url: str, transport: type[kombu_redis.Transport], exchange: Exchange, key: str, count: int
) -> tuple[float, float]:
    """Return the CPU and wall microseconds of one publish, over `count` publishes."""
    body = Envelope.of(GoalSubmitted(goal_id=new_id(), text="check the payments service")).body
    with Connection(url, transport=transport) as connection:
        producer = Producer(connection.channel(), exchange=exchange)

        def publish() -> None:
            producer.publish(
                body,
                routing_key=key,
                headers={"x-plangate-type": key},
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )

        per_call(publish, 50)  # connected, the table read, the script loaded
        cpu, wall = per_call(publish, count)
        return cpu * 1e6, wall * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--publishes", type=int, default=2000, help="per side and run")
    parser.add_argument("--runs", type=int, default=5, help="runs per side, in turns")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as folder:
        processes = Processes(Path(folder))
        try:
            url = args.redis_url or start_redis(processes)
            namespace = f"bench{uuid.uuid4().hex[:8]}"
            bus = Bus(url, namespace=namespace)
            bus.declare()
            try:
                with bus.observe():
                    say(f"{namespace}: stage queues declared, one observer of every type bound")
                    best: dict[tuple[str, str], tuple[float, float]] = {}
                    for run in range(args.runs):
                        for key in TYPES:
                            for side, transport in SIDES.items():
                                figures = measure(
                                    url, transport, bus.topology.exchange, key, args.publishes
                                )
                                cpu, wall = best.get((side, key), figures)
                                best[side, key] = (min(cpu, figures[0]), min(wall, figures[1]))
                        say(f"run {run + 1} of {args.runs} done")
            finally:
                bus.close()
                forget_namespace(url, namespace)
        finally:
            processes.stop()
    print(f"\n{'µs per publish (best of runs)':34}{'CPU':>8}{'wall':>8}")
    for key in TYPES:
        for side in SIDES:
            cpu, wall = best[side, key]
            print(f"  {key + ', ' + side:32}{cpu:8.1f}{wall:8.1f}")
        (kombu_cpu, kombu_wall), (ours_cpu, ours_wall) = (best[side, key] for side in SIDES)
        ratios = f"{kombu_cpu / ours_cpu:7.2f}x{kombu_wall / ours_wall:7.2f}x"
        print(f"  {key + ', kombu / plangate':32}{ratios}")


if __name__ == "__main__":
    main()
