"""One publish as plangate makes it: through kombu's retrying publish, or tried once first.

plangate publishes every message with a retry policy (a broker blip is ridden out). kombu's
`Producer.publish(retry=True)` wraps the publish, and the exchange's declaration, in a new
retry closure at each call; plangate now tries the publish once as it is, and hands it to
kombu's retrying publish only when it fails with an error kombu would retry. Both sides here
run plangate's whole `publish` (the producer span, the headers) on one producer, in turns, in
one process; the baseline's publish is what plangate's was. Printed: CPU microseconds per
publish, best of the runs, on the memory transport and on Redis (plangate's transport).

    python bench/publish_retry.py [--redis-url URL] [--publishes 3000] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import Processes, forget_namespace, per_call, say, start_redis
from kombu.messaging import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from plangate import telemetry
from plangate.bus import Bus, Envelope
from plangate.bus.envelope import CONTENT_TYPE, SENT_AT_HEADER
from plangate.bus.producers import PUBLISH_RETRY_POLICY, publish
from plangate.bus.topology import Topology
from schemas import GoalSubmitted, new_id


def through_kombus_retry(producer: Producer, topology: Topology, envelope: Envelope) -> None:
    """plangate's publish as it was: every publish through kombu's retrying publish."""
    headers = {**envelope.headers, SENT_AT_HEADER: datetime.now(UTC).isoformat()}
    with telemetry.producer_span(envelope.routing_key, headers):
        producer.publish(
            envelope.body,
            exchange=topology.exchange,
            routing_key=envelope.routing_key,
            headers=headers,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )


def tried_once_first(producer: Producer, topology: Topology, envelope: Envelope) -> None:
    """plangate's publish now."""
    publish(producer, topology, envelope, PUBLISH_RETRY_POLICY)


SIDES: dict[str, Callable[[Producer, Topology, Envelope], None]] = {
    "kombu's retrying publish": through_kombus_retry,
    "tried once first": tried_once_first,
}


def cpu_per_publish(side: Callable[..., None], bus: Bus, producer: Producer, count: int) -> float:
    envelope = Envelope.of(GoalSubmitted(goal_id=new_id(), text="check the payments service"))
    cpu, _ = per_call(lambda: side(producer, bus.topology, envelope), count)
    return cpu * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--publishes", type=int, default=3000, help="per side and run")
    parser.add_argument("--runs", type=int, default=5, help="runs per side, in turns")
    args = parser.parse_args()
    trace.set_tracer_provider(TracerProvider())  # as a worker has it: spans made, none exported
    best: dict[tuple[str, str], float] = {}
    brokers = ("memory", "Redis")
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as folder:
        processes = Processes(Path(folder))
        try:
            urls = dict(
                zip(brokers, ("memory://", args.redis_url or start_redis(processes)), strict=True)
            )
            for broker, url in urls.items():
                namespace = f"bench{uuid.uuid4().hex[:8]}"
                bus = Bus(url, namespace=namespace)
                try:
                    bus.declare()
                    producer: Any = bus._producers.producer()  # this thread's, as a stage's
                    for side in SIDES.values():  # connected, declared, scripts loaded
                        cpu_per_publish(side, bus, producer, 50)
                    for _ in range(args.runs):
                        for name, side in SIDES.items():
                            figure = cpu_per_publish(side, bus, producer, args.publishes)
                            best[broker, name] = min(best.get((broker, name), figure), figure)
                    say(f"{broker}: {args.runs} runs of each side done")
                finally:
                    bus.close()
                    if broker == "Redis":
                        forget_namespace(url, namespace)
        finally:
            processes.stop()
    print(f"\n{'CPU µs per publish (best of runs)':44}{'memory':>9}{'Redis':>9}")
    for name in SIDES:
        print(f"  {name:42}{best['memory', name]:9.1f}{best['Redis', name]:9.1f}")
    baseline, ours = SIDES
    saved = [best[broker, baseline] / best[broker, ours] for broker in brokers]
    print(f"  {'retrying / tried once first':42}{saved[0]:8.2f}x{saved[1]:8.2f}x")


if __name__ == "__main__":
    main()
