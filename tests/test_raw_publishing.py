"""Goals from another language: published straight onto the broker without kombu.

Each test follows docs/publishing-goals.md to the letter — raw redis commands on Redis, py-amqp
on RabbitMQ — and a fleet of worker processes runs the goal to `completed`.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import pytest
import redis

from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.test_distributed import APPROVE_ALL

WAIT = 25.0


def make_fleet(tmp_path: Path, broker_url: str) -> Fleet:
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=broker_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    return fleet


@pytest.fixture
def redis_fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path, redis_url)
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def rabbitmq_fleet(tmp_path: Path, rabbitmq_url: str) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path, rabbitmq_url)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def goal_body(goal_id: str) -> bytes:
    """The JSON body of the docs: schema_version 1, type goal.submitted, ids, text, time."""
    goal = {
        "schema_version": 1,
        "type": "goal.submitted",
        "message_id": uuid.uuid4().hex,
        "goal_id": goal_id,
        "text": SEED_GOAL,
        "metadata": {"submitted_by": "billing-service"},
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(goal).encode("utf-8")


def goal_headers(body: bytes, traced: bool = True) -> dict[str, str]:
    goal = json.loads(body)
    headers = {"x-plangate-goal-id": goal["goal_id"], "x-plangate-message-id": goal["message_id"]}
    if traced:
        headers["traceparent"] = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    return headers


def wait_until_completed(fleet: Fleet, goal_id: str) -> dict[str, Any]:
    """Poll `plangate status GOAL_ID --json` (the goal exists once the planner saw it)."""
    deadline = time.monotonic() + WAIT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = fleet.plangate("status", goal_id, "--json")
        if shown.returncode == 0:
            status = json.loads(shown.stdout)
            if status["status"] in ("completed", "failed", "plan_failed", "denied"):
                return status
        time.sleep(0.2)
    return status


def lpush_goal(fleet: Fleet, redis_url: str, body: bytes, headers: dict[str, Any]) -> None:
    """LPUSH a goal.submitted in kombu's Redis envelope onto the planner's queue."""
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": fleet.namespace, "routing_key": "goal.submitted"},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }
    client = redis.Redis.from_url(redis_url)
    try:
        client.lpush(f"{fleet.namespace}.planner", json.dumps(envelope))
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize("traced", [True, False], ids=["with-traceparent", "without"])
def test_a_goal_lpushed_onto_redis_in_kombu_s_envelope_completes(
    redis_fleet: Fleet, redis_url: str, traced: bool
) -> None:
    """Given workers of every stage on Redis,
    When a goal.submitted in kombu's Redis envelope is LPUSHed onto `<namespace>.planner`
    with redis-py alone (with a `traceparent` header, or without one),
    Then the planner creates the goal, and it runs to `completed`, as one trace: the one it
    came with, or one that starts at the planner.
    """
    redis_fleet.start_all()
    goal_id = uuid.uuid4().hex
    body = goal_body(goal_id)
    headers = goal_headers(body, traced)

    lpush_goal(redis_fleet, redis_url, body, headers)

    status = wait_until_completed(redis_fleet, goal_id)
    assert status.get("status") == "completed", redis_fleet.logs()
    if traced:
        assert status["trace_id"] == headers["traceparent"].split("-")[1]
    shown = redis_fleet.plangate("trace", goal_id)
    assert shown.returncode == 0, shown.stderr
    assert status["trace_id"]
    assert status["trace_id"] in shown.stdout


def amqp_connection(url: str) -> amqp.Connection:
    """Open a py-amqp connection from an `amqp://user:password@host:port/vhost` URL."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) or "/"
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
        connect_timeout=5,
    )
    connection.connect()
    return connection


def wait_for_consumer(connection: amqp.Connection, queue: str) -> None:
    """Wait until a worker consumes `queue`: by then it has declared the exchange and bindings.

    (A queue that merely exists may not be bound yet, and a message to an unbound routing key
    is dropped.) A passive declare fails until the queue exists, and closes the channel.
    """
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        channel = connection.channel()
        try:
            declared = channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            time.sleep(0.1)
            continue
        channel.close()
        if declared.consumer_count > 0:
            return
        time.sleep(0.1)
    pytest.fail(f"no worker consumed {queue} within {WAIT:g} s")


@pytest.mark.rabbitmq
def test_a_goal_published_with_py_amqp_onto_rabbitmq_completes(
    rabbitmq_fleet: Fleet, rabbitmq_url: str
) -> None:
    """Given workers of every stage on RabbitMQ, consuming (so the topology is declared),
    When a goal.submitted is published with py-amqp to the topic exchange `<namespace>`
    with routing key `goal.submitted`,
    Then the planner creates the goal, and it runs to `completed`.
    """
    rabbitmq_fleet.start_all()
    goal_id = uuid.uuid4().hex
    body = goal_body(goal_id)
    connection = amqp_connection(rabbitmq_url)
    try:
        wait_for_consumer(connection, f"{rabbitmq_fleet.namespace}.planner")
        channel = connection.channel()
        channel.basic_publish(
            amqp.basic_message.Message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                application_headers=goal_headers(body),
                delivery_mode=2,
            ),
            exchange=rabbitmq_fleet.namespace,
            routing_key="goal.submitted",
        )
        channel.close()
    finally:
        connection.close()

    status = wait_until_completed(rabbitmq_fleet, goal_id)
    assert status.get("status") == "completed", rabbitmq_fleet.logs()


@pytest.mark.redis
@pytest.mark.parametrize(
    "traceparent", ["{'a': 1}", "00-abc\r\n-01", None], ids=["not-w3c", "broken", "absent"]
)
def test_a_raw_goal_keeps_only_a_valid_trace_context_of_its_headers(
    redis_fleet: Fleet, redis_url: str, traceparent: str | None
) -> None:
    """Given a goal LPUSHed with 2,000 headers of its own, an `authorization` and a
    `traceparent` that is no W3C trace context,
    When the planner stores the goal,
    Then the goal keeps only a valid trace context, one that starts at the planner, and its
    trace is shown: every header was stored (megabytes a goal, a token in clear), and a
    malformed `traceparent` kept as it came left the goal without a trace.
    """
    redis_fleet.start_all()
    goal_id = uuid.uuid4().hex
    body = goal_body(goal_id)
    headers: dict[str, Any] = goal_headers(body, traced=False)
    headers |= {f"h{number}": "v" * 50 for number in range(2000)}
    headers["authorization"] = "Bearer sk-raw-publisher-secret"
    if traceparent is not None:
        headers["traceparent"] = traceparent

    lpush_goal(redis_fleet, redis_url, body, headers)

    status = wait_until_completed(redis_fleet, goal_id)
    assert status.get("status") == "completed", redis_fleet.logs()
    database = sqlite3.connect(redis_fleet.folder / "plangate.db")
    try:
        [(stored,)] = database.execute("SELECT trace_headers FROM goals WHERE id = ?", (goal_id,))
    finally:
        database.close()
    kept = json.loads(stored)
    assert set(kept) == {"traceparent"}
    assert kept["traceparent"].split("-")[1] == status["trace_id"]
    assert redis_fleet.plangate("trace", goal_id).returncode == 0
