"""The raw-kombu sides of `bench/pipeline.py`: the baseline's three hops, and the floor's.

Both are three `kombu_hop.py` processes passing the bodies plangate sent for its first goal
from hop to hop; the floor's also do the design's least durable work and checks (`floor.py`).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from floor import open_floor_store
from harness import Arrivals, Processes, Side, observer_queue, say
from kombu import Connection, Exchange, Producer, Queue
from kombu_hop import sender

from plangate.config import Settings

BENCH = Path(__file__).resolve().parent
# The four messages of a goal: what the client sends, and what each of the three hops sends on.
HOPS = ("goal.submitted", "plan.proposed", "plan.approved", "execution.completed")


def start_hops(
    processes: Processes,
    connection: Connection,
    settings: Settings,
    bodies: dict[str, Any],
    prefetch: int,
    floor: tuple[str, dict[str, str]] | None = None,
) -> Side:
    """Start three raw-kombu hops; return their side.

    Given `floor` (its store: a SQLite file or a PostgreSQL URL; and the environment its checks
    read plangate's settings from), they are the floor's hops.
    """
    name = "baseline" if floor is None else "floor"
    template = processes.folder / "baseline-bodies.json"
    template.write_text(json.dumps(bodies), encoding="utf-8")
    exchange_name = f"{settings.namespace}-{name}"
    exchange = Exchange(exchange_name, type="topic", durable=True)
    channel = connection.channel()
    for i in range(3):
        queue = Queue(f"{exchange_name}.hop{i + 1}", exchange=exchange, routing_key=HOPS[i])
        queue.bind(channel).declare()
    done = Arrivals(connection, observer_queue(exchange, f"{exchange_name}.done", (HOPS[-1],)))
    store = None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if floor is not None:
        store = open_floor_store(floor[0])
        store.create_schema()
        env = floor[1]
    for i in range(3):
        command = [sys.executable, str(BENCH / "kombu_hop.py"), settings.broker_url]
        command += [exchange_name, f"{exchange_name}.hop{i + 1}", HOPS[i], HOPS[i + 1]]
        command += [str(template), str(prefetch)]
        command += [] if floor is None else [floor[0]]
        processes.start(f"{name}{i + 1}", command, env)
    say(f"{name}: started 3 raw-kombu hop processes")
    producer = Producer(channel, exchange=exchange)
    first, old = bodies[HOPS[0]], bodies["goal_id"]

    def submit() -> str:
        goal_id = uuid.uuid4().hex
        headers = {k: v.replace(old, goal_id) for k, v in first["headers"].items()}
        send = sender(producer, exchange, headers)
        body = first["body"].replace(old, goal_id).encode("utf-8")
        if store is None:
            send(HOPS[0], body)
        else:
            store.submit(goal_id, HOPS[0], body, send)
        return goal_id

    return Side(name, submit, done, processes.check_alive)


def floor_store_beside(database_url: str, folder: Path) -> str:
    """Where the floor stores beside plangate's store: the same PostgreSQL, or a SQLite file."""
    return database_url if database_url.startswith("postgresql") else str(folder / "floor.db")


def check_floor(floor_store: str) -> None:
    """Check the floor's store: every goal completed, with its three steps succeeded."""
    store = open_floor_store(floor_store)
    try:
        goals = dict(store.db.execute("SELECT status, count(*) FROM goals GROUP BY status"))
        (steps,) = store.db.execute(
            "SELECT count(*) FROM steps WHERE status = 'succeeded'"
        ).fetchone()
    finally:
        store.close()
    if set(goals) != {"completed"} or steps != 3 * goals["completed"]:
        raise RuntimeError(f"the floor's store disagrees: goals {goals}, {steps} steps")
