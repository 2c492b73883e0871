"""plangate's distributed pipeline beside a raw-kombu 3-hop baseline and a floor, in one run.

plangate: `plangate db upgrade`, then one worker process per stage (`python -m plangate worker
STAGE`) with the playbook planner, a policy that approves every plan (`approve_all.yaml`) and
tools that answer at once (`instant_tools.py`; the write step still takes the executor's real
claim path). Goals are the seed example, submitted with `plangate.client.Client`; completion is
seen on an observer queue bound to the terminal message types (no store polling).

Baseline: three `kombu_hop.py` processes that only consume, parse and republish (hop 1 -> hop 2
-> hop 3 -> done) the very bodies and headers plangate sent for its first goal, with the same
message properties, prefetch and kind of topic exchange, measured the same way.

Floor: the same three hops plus the least durable work DESIGN.md asks of each stage (outbox,
audit chain, goal state, step claims and records, progress events) on plangate's kind of store,
without an ORM (`floor.py`): raw sqlite3 on a file of its own, or, given --database-url, psycopg
on the same PostgreSQL (a schema of its own, each commit waiting for its fsync): what any
implementation of the design must spend at the least, in Python, on this machine.

Celery (when installed: `pip install -e '.[bench]'`): the same hops as a chain of three Celery
tasks, a worker process each, acks_late, with the Redis result backend (`celery_chain.py`).

The sides run side by side and are measured in turns, so that all see the same machine (an idle
side only waits on the broker): sequential latency from submit to completion, one goal at a
time, alternating sides (p50/p99 over --sequential goals each, after 3 warm-up goals); then
pipelined throughput, --goals submitted at once and timed until all complete (baseline,
plangate, floor, Celery, then baseline again; the baseline's figure is the mean of its two
batches). Figures are printed, never asserted; the targets are printed beside them. So are
plangate's CPU by thread (`thread_split.py`) and SQLite's write lock by process (`lock_split.py`).

    python bench/pipeline.py [--redis-url redis://...] [--goals 200] [--sequential 50]
                             [--concurrency 4] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue
from sqlalchemy import select

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from plangate.client import Client  # noqa: E402
from plangate.config import Settings  # noqa: E402
from plangate.store import AuditRow, GoalRow, StepRunRow, open_store  # noqa: E402
from schemas.routing import TERMINAL_TYPES  # noqa: E402

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
STAGES = ("planner", "gate", "executor")
# A goal's outcome: a message that ends it, or its plan held (no person answers in a bench).
TERMINAL_KEYS = (*sorted(TERMINAL_TYPES), "plan.held")
WARMUP_GOALS = 3
PAUSE = 0.01  # seconds between sequential goals, so that no two goals overlap
# Issue 19: p50 <= 1.5 x the floor's, goals/s >= 0.8 x the floor's and >= 1.0 x Celery's.
FLOOR_P50_TARGET, FLOOR_RATE_TARGET, CELERY_RATE_TARGET = 1.5, 0.8, 1.0

from harness import (  # noqa: E402
    Arrivals,
    Processes,
    Side,
    forget_namespace,
    free_port,
    interrupt_on_signals,
    observer_queue,
    say,
    start_redis,
)
from hops import HOPS, check_floor, floor_store_beside, start_hops  # noqa: E402
from lock_split import per_goal, print_lock, reading  # noqa: E402
from thread_split import cpu_by_kind, print_split  # noqa: E402


def plangate_env(settings: Settings) -> dict[str, str]:
    """Return the environment of every plangate process of this run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    # `thread_names` names each thread in the kernel too, for the CPU split by thread.
    path = [str(BENCH / "thread_names"), str(BENCH), str(ROOT)]
    path += filter(None, [env.get("PYTHONPATH")])
    env.update(
        PLANGATE_BROKER_URL=settings.broker_url,
        PLANGATE_DATABASE_URL=settings.resolved_database_url(),
        PLANGATE_DATA_DIR=str(settings.data_dir),
        PLANGATE_NAMESPACE=settings.namespace,
        PLANGATE_POLICY_FILE=str(BENCH / "approve_all.yaml"),
        PLANGATE_PLANNER="playbook",
        PLANGATE_TOOLS="instant_tools",
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
    )
    return env


def upgrade_store(settings: Settings) -> None:
    """Run `plangate db upgrade`, as an operator would before starting workers."""
    upgrade = subprocess.run(
        [sys.executable, "-m", "plangate", "db", "upgrade"],
        env=plangate_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"plangate db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
    say(f"plangate: {upgrade.stdout.strip()}")


def start_plangate(
    args: argparse.Namespace,
    processes: Processes,
    settings: Settings,
    connection: Connection,
    client: Client,
) -> tuple[Side, dict[str, Any]]:
    """Start one worker per stage, run a first goal and capture its messages' bodies."""
    env = plangate_env(settings)
    exchange = Exchange(settings.namespace, type="topic", durable=True)
    # Bound before the first goal: a copy of its every message (read back once, then deleted),
    # and the terminal messages of all goals.
    everything = observer_queue(exchange, f"{settings.namespace}.bench-all", ("#",))
    everything.bind(connection.channel()).declare()
    done = Arrivals(
        connection, observer_queue(exchange, f"{settings.namespace}.bench-done", TERMINAL_KEYS)
    )
    ports = {stage: free_port() for stage in STAGES}  # each one's write lock is read there
    for stage in STAGES:
        command = [sys.executable, "-m", "plangate", "worker", stage]
        stage_env = {**env, "PLANGATE_METRICS_PORT": str(ports[stage])}
        processes.start(stage, [*command, "--concurrency", str(args.concurrency)], stage_env)
    say(f"plangate: started one worker per stage (concurrency {args.concurrency})")

    def submit() -> str:
        return client.submit(SEED_GOAL).goal_id

    first = submit()
    done.wait({first}, 90, processes.check_alive)
    bodies = capture_bodies(everything.bind(connection.channel()), first)
    say("plangate: the first goal completed; its messages are the baseline's")
    return Side("plangate", submit, done, processes.check_alive, metrics_ports=ports), bodies


def capture_bodies(queue: Queue, goal_id: str) -> dict[str, Any]:
    """Read back the first goal's four hop messages (body and headers), then drop the queue."""
    found: dict[str, Any] = {"goal_id": goal_id}
    while (raw := queue.get(no_ack=True, accept=["application/json"])) is not None:
        key = str(raw.delivery_info.get("routing_key", ""))
        body = raw.body if isinstance(raw.body, bytes) else str(raw.body).encode("utf-8")
        if key in HOPS and key not in found and json.loads(body).get("goal_id") == goal_id:
            headers = {str(k): str(v) for k, v in raw.headers.items()}
            found[key] = {"body": body.decode("utf-8"), "headers": headers}
    queue.delete()
    missing = [key for key in HOPS if key not in found]
    if missing:
        raise RuntimeError(f"the first goal's messages {missing} were not seen")
    return found


def audit_breakdown(side: Side, settings: Settings) -> dict[str, float]:
    """Check the store, and return the median ms per hop of the sequential goals (audit log)."""
    ids = side.ids
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            rows = session.execute(
                select(AuditRow.goal_id, AuditRow.kind, AuditRow.at).where(
                    AuditRow.goal_id.in_(ids)
                )
            ).all()
            statuses = set(session.scalars(select(GoalRow.status).where(GoalRow.id.in_(ids))))
            steps = list(
                session.scalars(select(StepRunRow.status).where(StepRunRow.goal_id.in_(ids)))
            )
    finally:
        store.close()
    if statuses != {"completed"} or len(steps) != 3 * len(ids) or set(steps) != {"succeeded"}:
        raise RuntimeError(f"the store disagrees: goals {sorted(statuses)}, {len(steps)} steps")
    at: dict[str, dict[str, float]] = {}
    for goal_id, kind, when in rows:
        at.setdefault(str(goal_id), {}).setdefault(kind, datetime.fromisoformat(when).timestamp())
    spans = {
        "client stored the goal": ("start", "goal.submitted"),
        "-> planner stored the plan": ("goal.submitted", "goal.proposed"),
        "-> gate stored the approval": ("goal.proposed", "goal.approved"),
        "-> executor started the run": ("goal.approved", "goal.running"),
        "-> executor ran the 3 steps": ("goal.running", "goal.completed"),
        "-> the client saw the outcome": ("goal.completed", "end"),
    }
    medians: dict[str, float] = {}
    for label, (a, b) in spans.items():
        gaps = []
        for goal_id, (start, end) in zip(ids, side.walls, strict=True):
            marks = {**at.get(goal_id, {}), "start": start, "end": end}
            if a in marks and b in marks:
                gaps.append(1000 * (marks[b] - marks[a]))
        medians[label] = statistics.median(gaps) if gaps else float("nan")
    return medians


# --- the run ----------------------------------------------------------------------------------


def start_celery_side(
    processes: Processes,
    connection: Connection,
    settings: Settings,
    bodies: dict[str, Any],
    concurrency: int,
) -> Side | None:
    """Start the Celery chain's workers, if Celery is installed; return its side."""
    try:
        from celery_chain import start_celery
    except ImportError:
        say("celery: not installed (pip install -e '.[bench]'); its side is left out")
        return None
    prefix = f"{settings.namespace}-celery"
    return start_celery(processes, connection, settings.broker_url, prefix, bodies, concurrency)


def compare(
    args: argparse.Namespace, processes: Processes, settings: Settings
) -> tuple[dict[str, Side], dict[str, float], dict[str, Any]]:
    """Start the sides, measure them in turns, stop them; return them and plangate's hops."""
    upgrade_store(settings)
    client = Client(settings)
    floor_store = floor_store_beside(settings.resolved_database_url(), processes.folder)
    try:
        with Connection(settings.broker_url) as connection:
            ours, bodies = start_plangate(args, processes, settings, connection, client)
            hops = (processes, connection, settings, bodies, args.concurrency)
            theirs = start_hops(*hops)
            # The floor's checks load plangate's tools, policy and the gate's public key.
            floor = start_hops(*hops, floor=(floor_store, plangate_env(settings)))
            celery = start_celery_side(processes, connection, settings, bodies, args.concurrency)
            sides = (ours, floor, theirs, *([celery] if celery else []))
            for side in sides:
                for _ in range(WARMUP_GOALS):
                    side.one(record=False)
            names = {side.name: tuple(f"{side.name}{i}" for i in (1, 2, 3)) for side in sides}
            names["plangate"] = STAGES
            cpu = {side.name: processes.cpu_seconds(names[side.name]) for side in sides}
            threads = {stage: processes.thread_cpu_seconds(stage) for stage in STAGES}
            say(f"sequential: {args.sequential} goals per side, one at a time, in turns")
            for i in range(args.sequential):
                for side in sides if i % 2 else reversed(sides):
                    side.one()
                    time.sleep(PAUSE)  # let the side's tail (e.g. marking outbox rows) end
            batches = (theirs, ours, floor, *sides[3:], theirs)
            say(f"pipelined: {args.goals} goals at once: " + ", ".join(s.name for s in batches))
            for side in batches:
                before = reading(ours.metrics_ports) if side is ours else None
                side.batch(args.goals)
                if before is not None:
                    ours.lock_ms = per_goal(before, reading(ours.metrics_ports), args.goals)
            for side in sides:
                measured = len(side.latencies) + args.goals * len(side.rates)
                used = processes.cpu_seconds(names[side.name]) - cpu[side.name]
                side.cpu_ms = 1000 * used / measured
                if side is ours:
                    ours.cpu_by_thread = {
                        stage: cpu_by_kind(
                            threads[stage], processes.thread_cpu_seconds(stage), measured
                        )
                        for stage in STAGES
                    }
                if side.outcomes() != {HOPS[-1]}:
                    raise RuntimeError(f"{side.name} goals ended with {sorted(side.outcomes())}")
                side.arrivals.close()
    finally:
        client.close()
    breakdown = audit_breakdown(ours, settings)
    check_floor(floor_store)
    say("every goal completed; each store holds 3 succeeded steps per goal")
    codes = processes.stop(lambda name: name != "redis")
    say(f"stopped the workers and hops (exit codes {codes})")
    return {side.name: side for side in sides}, breakdown, bodies


def report(sides: dict[str, Side], breakdown: dict[str, float], bodies: dict[str, Any]) -> None:
    """Print the side-by-side table, the ratios and whether each target is met."""
    sizes = ", ".join(f"{key} {len(bodies[key]['body'].encode())} B" for key in HOPS)
    print(f"\nmessages (the same bytes on every side): {sizes}")
    batches = ", ".join(f"{side.name} {len(side.rates)}" for side in sides.values())
    print(f"sequential: {len(sides['plangate'].latencies)} goals per side; batches: {batches}")
    print(f"load average (1 min) now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    rows = {
        "sequential p50 (ms)": lambda side: side.p(0.5),
        "sequential p99 (ms)": lambda side: side.p(0.99),
        "pipelined goals/s": lambda side: side.rate,
        "CPU per goal (ms)": lambda side: side.cpu_ms,
    }
    print(f"{'':22}" + "".join(f"{name:>10}" for name in sides))
    for label, figure in rows.items():
        print(f"{label:22}" + "".join(f"{figure(side):10.1f}" for side in sides.values()))
    ours = sides["plangate"]
    print("\nplangate beside each side:")
    for other in (side for name, side in sides.items() if name != "plangate"):
        ratios = "  ".join(
            f"{label.split(' (')[0]} {figure(ours) / figure(other):.2f}x"
            for label, figure in rows.items()
        )
        print(f"  / {other.name:9}{ratios}")
    targets = [
        ("p50 <= 1.5 x floor", ours.p(0.5) / sides["floor"].p(0.5), "<=", FLOOR_P50_TARGET),
        ("goals/s >= 0.8 x floor", ours.rate / sides["floor"].rate, ">=", FLOOR_RATE_TARGET),
    ]
    if "celery" in sides:
        rate = ours.rate / sides["celery"].rate
        targets.append(("goals/s >= 1.0 x Celery", rate, ">=", CELERY_RATE_TARGET))
    print("\ntargets (issue 19):")
    for label, ratio, sense, target in targets:
        met = ratio <= target if sense == "<=" else ratio >= target
        print(f"  {label:26}{ratio:6.2f}x   {'met' if met else 'NOT met'}")
    if ours.cpu_by_thread:
        print_split(ours.cpu_by_thread)
    print_lock(ours.lock_ms, ours.rates[0])
    print("\nplangate, median ms per hop of the sequential goals (audit log timestamps):")
    for label, ms in breakdown.items():
        print(f"  {label:34}{ms:8.1f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description="plangate's distributed pipeline beside a raw-kombu 3-hop baseline "
        "and the design's floor."
    )
    parser.add_argument("--redis-url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--goals", type=int, default=200, help="pipelined goals (default 200)")
    parser.add_argument(
        "--sequential", type=int, default=50, help="sequential goals per side (default 50)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="per worker, and hop prefetch (default 4)"
    )
    parser.add_argument(
        "--database-url", help="plangate's store (default: SQLite in a temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args(argv)
    if min(args.goals, args.sequential, args.concurrency) < 1:
        parser.error("--goals, --sequential and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both sides and print the comparison."""
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="plangate-bench-"))
    processes = Processes(folder)
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    interrupt_on_signals()
    try:
        broker_url = args.redis_url or start_redis(processes)
        say(f"redis at {broker_url}; files in {folder}")
        settings = Settings(
            broker_url=broker_url,
            database_url=args.database_url or f"sqlite:///{folder / 'plangate.db'}",
            data_dir=folder / "data",
            namespace=namespace,
        )
        report(*compare(args, processes, settings))
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    except (RuntimeError, TimeoutError) as exc:
        say(f"failed: {exc}\n(--keep keeps the worker logs)")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop the cleanup
            signal.signal(sig, signal.SIG_IGN)
        processes.stop(lambda name: name != "redis")
        if args.redis_url is not None:
            with suppress(Exception):
                forget_namespace(args.redis_url, namespace)
        processes.stop()
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
