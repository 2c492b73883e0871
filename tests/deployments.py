"""What both deployment tests (compose and Kubernetes) need: the servers the deployment names
but does not run (PostgreSQL as `postgres:5432`, an OTLP receiver for the collector), the CLI
an operator runs on their own machine, and one HTTP call to `serve`.

A plugin (tests/conftest.py), so the fixtures reach both test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.servers import accepts_connections, free_port, stop_process, wait_until_ready

DEPLOY = Path(__file__).parent.parent / "deploy"
READ_ONLY_GOAL = "How many tickets are open, and what is the SLA?"

# --- the servers the manifests name but do not run --------------------------------------


@pytest.fixture
def postgres_address(postgres_url: str) -> Iterator[str]:
    """`postgres:5432` as the deployments name it: role `plangate` (password `plangate`) owning a
    fresh database `plangate` on the test's PostgreSQL; yields its host:port."""
    url = make_url(postgres_url)
    admin = url.set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = 'plangate'")
        if exists.fetchone() is None:
            connection.execute("CREATE ROLE plangate LOGIN PASSWORD 'plangate'")
        connection.execute("DROP DATABASE IF EXISTS plangate WITH (FORCE)")
        connection.execute("CREATE DATABASE plangate OWNER plangate")
    try:
        yield f"{url.host}:{url.port}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS plangate WITH (FORCE)"))


@pytest.fixture
def otlp_receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """tests/otlp_receiver.py for the OTLP collector (compose's `jaeger:4318`); yields its
    host:port and its spans file."""
    port, spans = free_port(), tmp_path / "spans.jsonl"
    log = tmp_path / "otlp.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_receiver", str(port), str(spans)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready("otlp receiver", lambda: accepts_connections(port), process, [log], 10)
        yield f"127.0.0.1:{port}", spans
    finally:
        stop_process(process)


# --- what an operator does before the first start (deploy/README.md) -----------------------


def plangate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the plangate CLI on this machine with only PATH, HOME and `env`."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_reviewer(file: Path, home: Path, name: str, *roles: str) -> str:
    """`plangate reviewers add NAME [--role R] --file FILE`; return the token it printed."""
    options = [word for role in roles for word in ("--role", role)]
    added = plangate("reviewers", "add", name, *options, "--file", str(file), HOME=str(home))
    assert added.returncode == 0, added.stderr
    (token,) = [line for line in added.stdout.splitlines() if line.strip() and " " not in line]
    assert token not in file.read_text(encoding="utf-8")  # only its hash is kept
    return token.strip()


# --- talking to serve ------------------------------------------------------------------------


def call(
    url: str, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One HTTP request; return the status and the JSON answer (or the text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            status, raw = int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class ServeReplicas:
    """Talking to a deployment's `serve` replicas: submit on the first, follow on the second.

    A deployment's class gives `intake_token` and `url(replica)`.
    """

    intake_token: str

    def url(self, replica: int) -> str:
        """Return the base URL of serve's replica `replica` (1-based)."""
        raise NotImplementedError

    def submit(self, text: str) -> str:
        """Submit a goal with the intake token; return its id."""
        status, answer = call(
            f"{self.url(1)}/api/v1/goals", "POST", {"text": text}, self.intake_token
        )
        assert status in (200, 201, 202), answer
        return str(answer["goal_id"])

    def goal(self, goal_id: str, until: set[str], timeout: float = 45) -> dict[str, Any]:
        """Return the goal's state once it is one of `until` (followed on another replica)."""
        deadline = time.monotonic() + timeout
        while True:
            status, state = call(f"{self.url(2)}/api/v1/goals/{goal_id}", token=self.intake_token)
            assert status == 200, state
            if state["status"] in until:
                return dict(state)
            assert time.monotonic() < deadline, f"goal {goal_id} is {state['status']}: {state}"
            time.sleep(0.2)  # a poll's pace, with its deadline above

    def held(self, text: str) -> dict[str, Any]:
        """Submit `text` and return its goal's state once held (failing if it went elsewhere)."""
        state = self.goal(self.submit(text), {"held", "completed", "failed", "denied"})
        assert state["status"] == "held", state
        return state
