"""A broker that answers but refuses plangate's settings, on a real RabbitMQ.

A team whose company broker is RabbitMQ found each refusal a traceback: a queue of the
namespace declared before as a quorum queue, or a wrong password, made `plangate submit`
exit 1 with 84 lines after it had stored the goal (run again, a second goal), serve answer
500, and a worker's readiness probe drop the connection. Each is now one line saying what to
fix; a goal stays stored and is sent once a worker can publish it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from uuid import uuid4

import pytest
from kombu import Connection, Producer, Queue

from plangate.bus import Bus
from plangate.config import Settings
from plangate.readiness import broker_problem
from tests.servers import rabbitmqctl
from tests.support import (
    eventually,
    first_consume_failure,
    plangate_in,
    running_pipeline,
)

pytestmark = pytest.mark.rabbitmq
REPO = Path(__file__).resolve().parents[1]


def namespace() -> str:
    return f"t{uuid4().hex[:10]}"


def quorum_planner_queue(url: str, space: str) -> None:
    """Declare the namespace's planner queue as a quorum queue, as a company standard may."""
    with Connection(url) as connection:
        Queue(f"{space}.planner", durable=True, queue_arguments={"x-queue-type": "quorum"}).bind(
            connection.default_channel
        ).declare()


def wrong_password(url: str) -> str:
    return url.replace("guest:guest@", "guest:wrong@")


def test_submit_to_a_queue_declared_otherwise_stores_the_goal_and_says_what_to_fix(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    space = namespace()
    quorum_planner_queue(rabbitmq_url, space)
    env = {
        "PLANGATE_BROKER_URL": rabbitmq_url,
        "PLANGATE_NAMESPACE": space,
        "PLANGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'plangate.db'}",
    }
    assert plangate_in(tmp_path, "db", "upgrade", **env).returncode == 0

    submitted = plangate_in(tmp_path, "submit", "count tickets", **env)
    listed = plangate_in(tmp_path, "goals", "list", "--json", **env)

    said = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, said
    assert "Traceback" not in said
    assert "refuses plangate" in said
    assert "declared with other arguments" in said
    goals = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [goal["status"] for goal in goals] == ["submitted"]


def test_a_command_reading_the_broker_with_a_wrong_password_says_so_in_one_line(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    listed = plangate_in(tmp_path, "dlq", "list", PLANGATE_BROKER_URL=wrong_password(rabbitmq_url))

    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert "Traceback" not in listed.stderr
    [line] = listed.stderr.strip().splitlines()
    assert "refuses plangate" in line
    assert "check the user and password in PLANGATE_BROKER_URL" in line
    assert "wrong" not in line  # the password is not shown


def test_readiness_says_the_broker_refuses_the_settings(rabbitmq_url: str) -> None:
    """The probe dropped its connection (the refusal escaped it); now a 503's one line."""
    refused = Bus(wrong_password(rabbitmq_url), namespace=namespace())
    space = namespace()
    quorum_planner_queue(rabbitmq_url, space)
    declared_otherwise = Bus(rabbitmq_url, namespace=space)

    assert broker_problem(refused) == (
        "the broker refuses plangate's settings (the worker's log says what to fix)"
    )
    assert broker_problem(declared_otherwise) is not None


def test_a_worker_facing_a_queue_declared_otherwise_logs_what_to_fix_and_keeps_trying(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It logged "failed (not a broker outage)" with the refusal's traceback, again and again."""
    space = namespace()
    quorum_planner_queue(rabbitmq_url, space)

    record = first_consume_failure(Bus(rabbitmq_url, namespace=space), caplog)

    assert "the broker refuses its settings" in record.getMessage()
    assert "declared with other arguments" in record.getMessage()
    assert record.exc_info is None


def test_a_user_with_only_the_permissions_the_deploy_page_names_runs_a_goal(
    rabbitmq_url: str, settings: Settings
) -> None:
    """The page's `rabbitmqctl set_permissions` line, read from the page, is enough: every
    process declares the exchange and the queues, and observers add their own."""
    page = (REPO / "docs" / "how-to" / "deploy.md").read_text(encoding="utf-8")
    [line] = [row for row in page.splitlines() if row.startswith("rabbitmqctl set_permissions")]
    configure, write, read = shlex.split(line)[-3:]
    user = f"u{uuid4().hex[:8]}"
    rabbitmqctl(rabbitmq_url, "add_user", user, "secret-pw")
    rabbitmqctl(rabbitmq_url, "set_permissions", "-p", "/", user, configure, write, read)
    url = rabbitmq_url.replace("guest:guest@", f"{user}:secret-pw@")

    with running_pipeline(settings, broker_url=url, namespace="plangate") as pipeline:
        goal_id = pipeline.submit("Count the open tickets").goal_id
        assert pipeline.wait_for(goal_id, timeout=20).status == "completed"
        # `plangate dlq list` puts each letter back on the queue alone: it was refused
        # (ACCESS_REFUSED to amq.default) with the permissions the page named.
        with pipeline.bus.connection() as connection:  # as a foreign producer could
            producer = Producer(connection.channel(), exchange=pipeline.bus.topology.exchange)
            producer.publish(
                b"not json", routing_key="goal.submitted", content_type="application/json"
            )
        env = {"PLANGATE_BROKER_URL": url, "PLANGATE_NAMESPACE": "plangate"}

        def listed() -> subprocess.CompletedProcess[str] | None:
            done = plangate_in(settings.data_dir, "dlq", "list", "--json", **env)
            return done if done.returncode != 0 or done.stdout.strip() else None

        first = eventually(listed, timeout=20, what="the dead letter listed")
        again = listed()
        assert again is not None

    for each in (first, again):
        assert each.returncode == 0, each.stderr
        assert len(each.stdout.splitlines()) == 1
