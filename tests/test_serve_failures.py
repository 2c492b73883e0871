"""`plangate serve` as a process, failing on a request: the answer is still hardened, and it lives.

The 500 is made the way it happens in a deployment: the store changes under a running server
(here a table is renamed away), not by a route added to the app in the test's own process.
A reviewer logs in over real HTTP with the token `plangate reviewers add` printed.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from plangate.reviewers import add_reviewer
from tests.fleet import Fleet
from tests.postgres_roles import migrate_as_owner, owned_database
from tests.servers import free_port, refusing_connections
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]
UNKNOWN_GOAL = "0" * 32


@dataclass
class Served:
    url: str
    database: Path
    log: Path
    token: str  # a reviewer's


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[Served]:
    """A `plangate serve` process on a migrated SQLite store, with one reviewer."""
    database = tmp_path / "plangate.db"
    with serving(tmp_path, redis_url, f"sqlite:///{database}") as served:
        yield served


@contextmanager
def serving(
    tmp_path: Path, redis_url: str, database_url: str, *, migrate: Callable[[], None] | None = None
) -> Iterator[Served]:
    """Run `plangate serve` on a migrated store, with one reviewer, until the block ends.

    `migrate`: how the store is migrated (by default `plangate db upgrade` at `database_url`).
    """
    database = tmp_path / "plangate.db"
    reviewers = tmp_path / "reviewers.yaml"
    token = add_reviewer(reviewers, "alice", ["finance"])
    fleet = Fleet(broker_url=redis_url, database_url=database_url, folder=tmp_path)
    if migrate is None:
        assert fleet.plangate("db", "upgrade").returncode == 0
    else:
        migrate()
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "plangate", "serve", "--port", str(port)],
            env=fleet.env(
                PLANGATE_REVIEWERS_FILE=str(reviewers),
                PLANGATE_SESSION_SECRET="a-session-secret-for-the-serve-failure-test",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not answers(url):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "serve did not answer /healthz within 30 s"
            time.sleep(0.1)
        yield Served(url, database, log_path, token)
    finally:
        process.terminate()
        # A clean stop at SIGTERM is exit 0, as a worker's (uvicorn's re-raised signal: 143).
        assert process.wait(timeout=20) == 0, log_path.read_text()[-3000:]


def test_a_request_the_server_fails_on_is_answered_hardened_and_the_server_goes_on(
    served: Served,
) -> None:
    """Given a running `serve` whose store loses its goals table,
    When a logged-in reviewer's browser asks for a goal's page, and an API client for the goal,
    Then each gets a 500 that says the log has the reason and shows no traceback; both carry
    the headers every answer carries (no cache, no framing, no sniffing) and the page runs no
    script; the log says what failed; and the process still answers its liveness probe.
    """
    with httpx.Client(base_url=served.url, timeout=10) as browser:
        logged_in = browser.post("/login", data={"token": served.token})
        assert logged_in.status_code == 303, logged_in.text
        with sqlite3.connect(served.database) as connection:
            connection.execute("ALTER TABLE goals RENAME TO goals_moved_away")
        page = browser.get(f"/goals/{UNKNOWN_GOAL}", headers={"Accept": "text/html"})
    api = httpx.get(f"{served.url}/api/v1/goals/{UNKNOWN_GOAL}", timeout=10)

    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for failed in (page, api):
        assert failed.status_code == 500, failed.text
        assert "the server failed on this request" in failed.text
        assert "Traceback" not in failed.text
        assert "goals_moved_away" not in failed.text
        assert failed.headers["cache-control"] == "no-store"
        assert failed.headers["x-frame-options"] == "DENY"
        assert failed.headers["x-content-type-options"] == "nosniff"
    assert answers(served.url)
    assert "no such table: goals" in served.log.read_text()


@pytest.mark.postgres
def test_a_database_that_stops_answering_is_a_503_to_retry_and_serve_recovers(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given `serve` on PostgreSQL, and its database then refusing every connection (its
    sessions ended, as in a restart),
    When a goal is submitted and the held plans are listed,
    Then each answer is a 503 saying the store does not answer and to try again, with
    Retry-After, and the log has one line a request, no traceback: it was a 500 and a
    traceback holding the SQL at each request. Once the database answers, so does serve.
    """
    with serving(tmp_path, redis_url, postgres_database_url) as served:
        with refusing_connections(postgres_database_url):
            goal = httpx.post(f"{served.url}/api/v1/goals", json={"text": "count"}, timeout=10)
            listed = httpx.get(
                f"{served.url}/api/v1/reviews",
                headers={"Authorization": f"Bearer {served.token}"},
                timeout=10,
            )
        for refused in (goal, listed):
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"error": "the store does not answer; try again shortly"}
            assert refused.headers["retry-after"] == "5"
        log = served.log.read_text()
        assert "the store does not answer (OperationalError)" in log
        assert "Traceback" not in log
        again = httpx.post(f"{served.url}/api/v1/goals", json={"text": "count"}, timeout=10)
        assert again.status_code in (201, 202), again.text


@pytest.mark.postgres
def test_a_connection_the_database_dropped_is_a_503_to_retry_though_it_answers_again(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given `serve` on PostgreSQL with a connection in its pool, When the database ends its
    sessions and answers again at once (an immediate restart, a failover), Then the request
    that meets the dead connection gets a 503 with Retry-After, as in any restart: the database
    answered the probe by then, and it was a 500 a retrying client gives up on. The next one
    goes through."""
    with serving(tmp_path, redis_url, postgres_database_url) as served:
        first = httpx.post(f"{served.url}/api/v1/goals", json={"text": "count"}, timeout=10)
        assert first.status_code in (201, 202), first.text
        with refusing_connections(postgres_database_url):
            pass  # its sessions ended; connections allowed again at once
        dropped = httpx.post(f"{served.url}/api/v1/goals", json={"text": "count"}, timeout=10)
        again = httpx.post(f"{served.url}/api/v1/goals", json={"text": "count"}, timeout=10)

    assert dropped.status_code == 503, dropped.text
    assert dropped.headers["retry-after"] == "5"
    assert "the database connection was lost" in dropped.json()["error"]
    assert again.status_code in (201, 202), again.text


def test_a_dropped_connection_is_a_503_even_when_the_store_answers_the_probe() -> None:
    """The request's connection died in a restart the database is already back from: the
    probe beside it answers, and the failure was taken for plangate's own (500). A connection
    SQLAlchemy invalidated is a 503 to try again."""
    import asyncio
    import time as clock

    from fastapi import FastAPI
    from sqlalchemy.exc import OperationalError
    from starlette.requests import Request

    from plangate.server.errors import install_handlers

    app = FastAPI()
    install_handlers(app)
    app.state.store_probed = (clock.monotonic(), None)  # the probe just found it answering
    scope = {"type": "http", "method": "POST", "path": "/api/v1/goals", "headers": [], "app": app}
    dropped = OperationalError("COMMIT", {}, Exception("server closed the connection"))
    dropped.connection_invalidated = True
    handler = app.exception_handlers[OperationalError]

    answer = asyncio.run(handler(Request(scope), dropped))  # type: ignore[arg-type]

    assert answer.status_code == 503
    assert b"the database connection was lost" in bytes(answer.body)
    assert answer.headers["retry-after"] == "5"


REFUSALS_SQL = """
CREATE FUNCTION refuse_goals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.text = 'a slow insert' THEN PERFORM pg_sleep(5); END IF;
  IF NEW.text = 'a conflict' THEN
    RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure';
  END IF;
  IF NEW.text = 'a deadlock' THEN
    RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_goals BEFORE INSERT ON goals FOR EACH ROW EXECUTE FUNCTION refuse_goals();
"""


@pytest.mark.postgres
def test_work_the_database_refuses_for_now_is_a_503_with_its_reason_to_retry(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given `serve` on PostgreSQL as a role with the documented grants, a lock_timeout and a
    statement_timeout, as a DBA sets them,
    When the database refuses a request's work for now: a lock held past lock_timeout, an
    insert past statement_timeout, a serialization conflict, a deadlock, every connection
    slot of the role taken,
    Then each is a 503 that says why and to try again, with Retry-After, logged as one line
    with what to change and no traceback: each was a 500 "the server failed" and a traceback.
    """
    with owned_database(postgres_url) as roles:
        database = roles.admin_url
        user = sql.Identifier(roles.user)

        def migrate() -> None:
            migrate_as_owner(tmp_path, redis_url, roles)
            with psycopg.connect(database, autocommit=True) as connection:
                connection.execute(REFUSALS_SQL.encode())
                for setting in ("lock_timeout = '300ms'", "statement_timeout = '2s'"):
                    connection.execute(sql.SQL(f"ALTER ROLE {{}} SET {setting}").format(user))

        with serving(tmp_path, redis_url, roles.user_url, migrate=migrate) as served:
            reviewer = {"Authorization": f"Bearer {served.token}"}

            def goal(text: str) -> httpx.Response:
                return httpx.post(f"{served.url}/api/v1/goals", json={"text": text}, timeout=10)

            def reviews() -> httpx.Response:
                return httpx.get(f"{served.url}/api/v1/reviews", headers=reviewer, timeout=10)

            answered: dict[str, list[httpx.Response]] = {}
            with psycopg.connect(database) as holder:
                holder.execute("LOCK TABLE goals, plans IN ACCESS EXCLUSIVE MODE")
                answered["lock_timeout"] = [goal("count"), reviews()]
            answered["statement_timeout"] = [goal("a slow insert")]
            answered["rolled back"] = [goal("a conflict"), goal("a deadlock")]
            with psycopg.connect(database, autocommit=True) as connection:
                connection.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 0").format(user))
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (roles.user,),
                )
                # The first request may meet a pooled connection ended so (a 503 of its own).
                refused = eventually(
                    lambda: None if "connection was lost" in (r := goal("count")).text else r,
                    timeout=10,
                    what="a request past the pooled connections ended",
                )
                answered["too many connections"] = [refused, reviews()]
                connection.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(user))
            again = goal("count")
        log = served.log.read_text()

    reasons = {
        "lock_timeout": "the database did not grant a lock in time (lock_timeout)",
        "statement_timeout": "the database cancelled a statement (statement_timeout",
        "rolled back": "the database rolled back a transaction",
        "too many connections": "the database refuses new connections (too many connections)",
    }
    for case, answers_ in answered.items():
        for refused in answers_:
            assert refused.status_code == 503, (case, refused.text)
            assert reasons[case] in refused.json()["error"], (case, refused.text)
            assert refused.json()["error"].endswith("; try again shortly"), refused.text
            assert refused.headers["retry-after"] == "5"
    assert again.status_code in (201, 202), again.text
    assert "Traceback" not in log
    assert "the server failed" not in log
    assert "raise its max_connections" in log
    assert "POST /api/v1/goals: the database did not grant a lock in time" in log


def test_a_goal_stored_is_answered_201_though_its_status_then_cannot_be_read(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given `serve` on PostgreSQL as a role with the documented grants, then none to read
    plans (as the moment after an insert can find the database out of connections),
    When a goal without an idempotency key is posted,
    Then it is answered 201 `submitted` and stored once: it was a 503 "try again", and its
    client, trying again, made the goal twice.
    And with no grant to insert goals, a post is a 500 saying the role lacks a privilege, the
    log one line with PostgreSQL's words and what to grant: it was a traceback of 110 lines
    with the statement and the goal's text.
    """
    with owned_database(postgres_url) as roles:
        database = roles.admin_url
        user = sql.Identifier(roles.user)

        def migrate() -> None:
            migrate_as_owner(tmp_path, redis_url, roles)

        with (
            serving(tmp_path, redis_url, roles.user_url, migrate=migrate) as served,
            psycopg.connect(database, autocommit=True) as connection,
        ):
            connection.execute(sql.SQL("REVOKE SELECT ON plans FROM {}").format(user))
            goals = f"{served.url}/api/v1/goals"
            posted = httpx.post(goals, json={"text": "count tickets"}, timeout=10)
            stored = connection.execute("SELECT id FROM goals").fetchall()
            connection.execute(sql.SQL("REVOKE INSERT ON goals FROM {}").format(user))
            refused = httpx.post(goals, json={"text": "a secret text"}, timeout=10)
        log = served.log.read_text()

    assert posted.status_code == 201, posted.text
    assert (posted.json()["status"], posted.json()["duplicate"]) == ("submitted", False)
    assert [row[0] for row in stored] == [posted.json()["goal_id"]]
    assert refused.status_code == 500, refused.text
    assert "refuses plangate's role a privilege" in refused.json()["error"]
    assert "permission denied for table goals" in log
    assert "run `plangate db upgrade` as the database's owner" in log
    assert "Traceback" not in log
    assert "a secret text" not in log
