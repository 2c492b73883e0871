"""The embedded mode's latency: plangate's waking memory transport beside kombu's polling one.

One process, one SQLite file per side, the approve-all policy and the instant tools of
`pipeline.py`: the seed goal planned, approved and run, one goal at a time, sides in turns.
Latency is from `submit` to the goal's outcome on an observer (no store polling). The
"polling" side is the embedded mode as it was: kombu's memory transport, looking every 10 ms.

    python bench/embedded.py [--goals 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from kombu.transport import memory  # noqa: E402

from plangate.bus import bus as bus_module  # noqa: E402
from plangate.config import Settings  # noqa: E402
from plangate.embedded import Pipeline  # noqa: E402
from schemas.routing import TERMINAL_TYPES  # noqa: E402

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
WARMUP_GOALS = 3


# The polling side's broker: kombu's own memory transport, polling every 10 ms (as before),
# under a scheme of its own so that each side's connections get their own transport.
POLLING = "polling-memory"
bus_module._TRANSPORTS[POLLING] = memory.Transport
bus_module._TRANSPORT_OPTIONS[POLLING] = {"polling_interval": 0.01}


@contextmanager
def pipeline(folder: Path, namespace: str, broker_url: str) -> Iterator[Pipeline]:
    settings = Settings(
        data_dir=folder,
        namespace=namespace,
        policy_file=BENCH / "approve_all.yaml",
        tools="instant_tools",
        planner="playbook",
    )
    with Pipeline(settings, broker_url=broker_url) as running:
        yield running


def one_goal(running: Pipeline) -> float:
    """Submit the seed goal; return the seconds until its outcome is published."""
    with running.bus.observe() as observer:
        started = time.perf_counter()
        goal_id = running.submit(SEED_GOAL).goal_id
        while True:
            message = observer.next(timeout=30)
            if message is None:
                sys.exit(f"goal {goal_id} did not end within 30 s")
            if message.goal_id == goal_id and message.type in TERMINAL_TYPES:
                if message.type != "execution.completed":
                    sys.exit(f"goal {goal_id} ended as {message.type}")
                return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, default=50, help="sequential goals per side")
    goals = parser.parse_args().goals
    latencies: dict[str, list[float]] = {"waking (plangate)": [], "polling (kombu)": []}
    with (
        tempfile.TemporaryDirectory() as folder,
        pipeline(Path(folder) / "waking", "waking", "memory://") as waking,
        pipeline(Path(folder) / "polling", "polling", f"{POLLING}://") as polling,
    ):
        sides = {"waking (plangate)": waking, "polling (kombu)": polling}
        for running in sides.values():
            for _ in range(WARMUP_GOALS):
                one_goal(running)
        for _ in range(goals):
            for name, running in sides.items():
                latencies[name].append(one_goal(running))
    print(f"embedded mode, {goals} sequential goals per side (in turns), Redis-free, SQLite")
    base = statistics.median(latencies["polling (kombu)"])
    for name, measured in latencies.items():
        p50 = statistics.median(measured)
        p99 = sorted(measured)[max(0, round(len(measured) * 0.99) - 1)]
        print(
            f"  {name:<20} p50 {p50 * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms   "
            f"p50 {p50 / base:4.2f}x polling"
        )


if __name__ == "__main__":
    main()
