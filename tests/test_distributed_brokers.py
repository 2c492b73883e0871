"""The seed goal end to end on real servers: RabbitMQ or Redis as the broker, PostgreSQL or SQLite.

The same embedded pipeline as in test_pipeline.py, moved onto the servers the distributed mode
runs on; a goal must come out the same whatever carries it.
"""

from __future__ import annotations

import pytest

from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan

WAIT = 10.0


@pytest.mark.parametrize(
    ("broker", "database"),
    [
        pytest.param("amqp", "sqlite", marks=pytest.mark.rabbitmq, id="rabbitmq-sqlite"),
        pytest.param(
            "amqp",
            "postgres",
            marks=[pytest.mark.rabbitmq, pytest.mark.postgres],
            id="rabbitmq-postgres",
        ),
        pytest.param(
            "redis",
            "postgres",
            marks=[pytest.mark.redis, pytest.mark.postgres],
            id="redis-postgres",
        ),
    ],
)
def test_the_approved_seed_goal_completes_with_one_page(
    request: pytest.FixtureRequest, settings: Settings, broker: str, database: str
) -> None:
    """Given the pipeline on a real broker and store, and the seed goal held for a person.

    When alice approves its plan,
    Then the goal completes with every step succeeded, and on-call is paged exactly once.
    """
    broker_url = str(request.getfixturevalue("rabbitmq_url" if broker == "amqp" else "redis_url"))
    if database == "postgres":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_database_url")}
        )
    with Pipeline(settings, broker_url=broker_url) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=WAIT)
        plan = only_plan(pipeline.store, goal_id)

        pipeline.approve(plan.plan_id, "alice")

        goal = pipeline.wait_for(goal_id, timeout=WAIT)
    assert goal.status == "completed", goal.status_reason
    [page] = read_notifications()
    assert page["goal_id"] == goal_id
    assert page["message"] == "Ticket count 128 exceeded SLA 100"
