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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from plangate.reviewers import add_reviewer
from tests.fleet import Fleet
from tests.servers import free_port

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
    reviewers = tmp_path / "reviewers.yaml"
    token = add_reviewer(reviewers, "alice", ["finance"])
    fleet = Fleet(broker_url=redis_url, database_url=f"sqlite:///{database}", folder=tmp_path)
    assert fleet.plangate("db", "upgrade").returncode == 0
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
        process.wait(timeout=20)


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
