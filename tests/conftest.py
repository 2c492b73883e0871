"""Shared fixtures: isolated settings, a running embedded pipeline, the broker under test.

The real servers (Redis, PostgreSQL, RabbitMQ) are started by the fixtures in `tests.servers`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.bus import Bus
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.store import Store, audit_records, open_store
from tests.http_recorder import INTEGRATION_VARIABLES

# Not imported here: as a plugin, its asserts are rewritten like a test module's.
pytest_plugins = ["tests.servers", "tests.deployments"]

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data folder, namespace and demo records belong to this test alone."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", str(tmp_path / "notifications.jsonl"))
    # A developer's real Jira or PagerDuty settings must never be reached from a test.
    for name in (
        "PLANGATE_DEMO_TICKET_COUNT",
        "PLANGATE_DEMO_SLA",
        "PLANGATE_DEMO_DATA",
        *INTEGRATION_VARIABLES,
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "PLANGATE_PLANNER",
    ):
        monkeypatch.delenv(name, raising=False)
    return Settings(data_dir=tmp_path / "data", namespace=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def pipeline(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """The three stages running in threads on the memory transport and a SQLite file.

    After the test, what `status` shows must agree with the audit log (`audit verify`'s
    records check): every flow a test drives is a case it must not call tampering.
    """
    with Pipeline(settings) as running:
        yield running
        if request.node.get_closest_marker("tampers") is None:
            problem = audit_records.disagreement(running.store)
            assert problem is None, problem


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on a SQLite file, or on a fresh PostgreSQL database: each test twice.

    (A module that needs a store of its own kind defines its own `store`.)
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'plangate.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each bus-level test runs on the memory transport, a real Redis and a real RabbitMQ."""
    if request.param == "memory":
        return "memory://"
    server = "redis_url" if request.param == "redis" else "rabbitmq_url"
    return str(request.getfixturevalue(server))


@pytest.fixture
def bus(broker_url: str) -> Iterator[Bus]:
    """A bus on its own namespace (on each broker), with the exchange and queues declared."""
    opened = Bus(broker_url, namespace=f"t{uuid.uuid4().hex[:10]}")
    opened.declare()
    try:
        yield opened
    finally:
        opened.close()
