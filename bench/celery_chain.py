"""The Celery side of `bench/pipeline.py`: the seed example as a chain of three Celery tasks.

What a team would write instead of plangate's three stages with Celery: `hop1 | hop2 | hop3`,
each task on its own queue served by its own worker process (threads pool, the bench's
concurrency), `acks_late` (a task is acked only once it returned, as plangate acks after its
commit), the Redis broker and the Redis result backend. Each task parses the message it is
given and returns the next one: the very bodies plangate sent for its first goal, with this
goal's id put in. The third also publishes the outcome to the side's exchange, as the other
sides' last hops do, so that every side's goals are timed by the same clock.

The workers read their settings from the environment the bench gives them (`BENCH_CELERY_*`);
`start_celery` starts them (`python -m celery -A celery_chain worker -Q QUEUE ...`) and returns
the side. Celery is a peer in the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chain
from harness import Arrivals, Processes, Side, observer_queue, say
from kombu import Connection, Exchange

BENCH = Path(__file__).resolve().parent
HOPS = ("goal.submitted", "plan.proposed", "plan.approved", "execution.completed")
TASKS = ("hop1", "hop2", "hop3")

_BROKER = os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
_PREFIX = os.environ.get("BENCH_CELERY_PREFIX", "bench-celery")
_TEMPLATE = os.environ.get("BENCH_CELERY_TEMPLATE", "")

app = Celery("celery_chain")
app.conf.update(
    broker_url=_BROKER,
    result_backend=_BROKER,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_routes={name: {"queue": f"{_PREFIX}.{name}"} for name in TASKS},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
exchange = Exchange(_PREFIX, type="topic", durable=True)
_bodies: dict[str, Any] = json.loads(Path(_TEMPLATE).read_text("utf-8")) if _TEMPLATE else {}


def _next(body: str, out_key: str) -> str:
    goal_id = json.loads(body)["goal_id"]
    return str(_bodies[out_key]["body"]).replace(_bodies["goal_id"], goal_id)


@app.task(name="hop1")
def hop1(body: str) -> str:
    """Take the goal, return the plan (as the planner would)."""
    return _next(body, HOPS[1])


@app.task(name="hop2")
def hop2(body: str) -> str:
    """Take the plan, return the approval (as the gate would)."""
    return _next(body, HOPS[2])


@app.task(name="hop3")
def hop3(body: str) -> str:
    """Take the approval, return the outcome and publish it (as the executor would)."""
    outcome = _next(body, HOPS[3])
    with app.producer_or_acquire() as producer:
        producer.publish(
            outcome.encode("utf-8"),
            exchange=exchange,
            routing_key=HOPS[3],
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            declare=[exchange],
            retry=True,
        )
    return outcome


def start_celery(
    processes: Processes,
    connection: Connection,
    broker_url: str,
    prefix: str,
    bodies: dict[str, Any],
    concurrency: int,
) -> Side:
    """Start one Celery worker per task; return the side that sends goals down the chain."""
    template = processes.folder / "celery-bodies.json"
    template.write_text(json.dumps(bodies), encoding="utf-8")
    env = {
        **os.environ,
        "BENCH_CELERY_BROKER_URL": broker_url,
        "BENCH_CELERY_PREFIX": prefix,
        "BENCH_CELERY_TEMPLATE": str(template),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    side_exchange = Exchange(prefix, type="topic", durable=True)
    done = Arrivals(connection, observer_queue(side_exchange, f"{prefix}.done", (HOPS[-1],)))
    for number, task in enumerate(TASKS, start=1):
        command = [
            *(sys.executable, "-m", "celery", "-A", "celery_chain", "worker"),
            *("-Q", f"{prefix}.{task}", "-n", f"{prefix}-{task}@%h", "--loglevel", "WARNING"),
            *("--pool", "threads", "--concurrency", str(concurrency)),
            # What a tuned deployment turns off: worker-to-worker chatter a chain never needs.
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
        processes.start(f"celery{number}", command, env)
    say("celery: started one worker per task (threads pool, acks_late, Redis result backend)")
    # This process only sends: the same broker, backend and queues as the workers.
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        task_routes={name: {"queue": f"{prefix}.{name}"} for name in TASKS},
    )
    first, template_goal = str(bodies[HOPS[0]]["body"]), str(bodies["goal_id"])

    def submit() -> str:
        goal_id = uuid.uuid4().hex
        chain(hop1.s(first.replace(template_goal, goal_id)), hop2.s(), hop3.s()).apply_async()
        return goal_id

    return Side("celery", submit, done, processes.check_alive)
