"""Workers and `serve` started together with their migration: `--wait-for-schema SECONDS`.

`kubectl apply -k` creates the migration Job and the Deployments at once, and nothing orders
them: on a new, empty database every worker and `serve` exited 2 at once, and their restarts
backed off (CrashLoopBackOff, up to 5 minutes) past the Job's end. With the option they wait,
alive and not ready, for a schema behind this plangate's only; one a newer plangate migrated is
refused at once, as is any behind schema without the option (a person at a terminal).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.server.security_headers import security_headers
from plangate.store import open_store
from plangate.store.schema import head_revision
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, STAGES, Fleet
from tests.servers import free_port
from tests.support import answers, eventually, get, plangate_in

EXIT_USAGE = 2
NEWER = "9999"  # a revision only a newer plangate's migrations would write
EMPTY = (
    f"the database schema is at nothing (empty database), this plangate needs {head_revision()}: "
    "run `plangate db upgrade` first"
)
APPROVE_ALL = """
rules:
  - name: approve-everything
    match: "true"
    action: approve
    reason: these tests approve every plan
"""


def submit_to(url: str, text: str) -> str:
    """POST a goal to serve; return its id."""
    request = urllib.request.Request(
        f"{url}/api/v1/goals",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201
        goal_id: str = json.loads(answer.read())["goal_id"]
        return goal_id


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_deployment_started_before_its_migration_waits_for_it_then_runs_goals(
    tmp_path: Path, redis_url: str
) -> None:
    """Given an empty database (the migration Job has not run yet), and a worker of each stage
    and `serve` started with `--wait-for-schema 30`,
    Then each stays up, alive (/healthz 200) and not ready (/readyz 503, saying what it waits
    for), and logs that it waits, for how long, and for what;
    When `plangate db upgrade` runs from another process,
    Then each becomes ready, says so, and a goal submitted to serve completes.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    database = tmp_path / "plangate.db"
    database.touch()  # an empty database, as a new PostgreSQL one is
    fleet = Fleet(redis_url, f"sqlite:///{database}", tmp_path)
    fleet.extra_env.update(FAST_SWEEPS, PLANGATE_POLICY_FILE=str(policy))
    ports = {name: free_port() for name in (*STAGES, "serve")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for stage in STAGES:
            fleet.start(stage, "--wait-for-schema", "30", PLANGATE_METRICS_PORT=str(ports[stage]))
        fleet.serve(ports["serve"], "--wait-for-schema", "30")
        for name, url in urls.items():
            eventually(lambda url=url: answers(f"{url}/readyz"), 30, f"{name}'s probes")
        alive = {name: get(f"{url}/healthz") for name, url in urls.items()}
        waiting = {name: get(f"{url}/readyz") for name, url in urls.items()}
        assert all(process.poll() is None for _, process in fleet.processes), fleet.logs()

        upgrade = fleet.plangate("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        for name, url in urls.items():
            eventually(lambda url=url: answers(f"{url}/readyz") == 200, 30, f"{name} ready")
        goal_id = submit_to(urls["serve"], SEED_GOAL)
        done = eventually(
            lambda: get(f"{urls['serve']}/api/v1/goals/{goal_id}")[1]["terminal"], 40, "the goal"
        )
        final = get(f"{urls['serve']}/api/v1/goals/{goal_id}")[1]
    finally:
        codes = fleet.stop_all()

    said = "".join(log.read_text() for log in sorted(tmp_path.glob("*.log")))  # whole logs
    assert done, said
    assert final["status"] == "completed", said
    assert alive == {name: (200, {"status": "ok"}) for name in urls}
    reason = {"status": "unavailable", "reason": f"waiting for the migration: {EMPTY}"}
    assert waiting == {name: (503, reason) for name in urls}
    assert said.count("waiting up to 30 s (--wait-for-schema) for it to run") == len(urls), said
    assert "the plangate-db-upgrade Job runs it" in said
    assert said.count(f"the database schema is at {head_revision()}, this plangate's") == len(urls)
    assert codes == [0, 0, 0, 0], said


def security_headers_of(url: str) -> dict[str, str]:
    """GET `url` (any status); return the security headers of its answer, by lower-case name."""
    names = {name.lower() for name in security_headers("/", "text/html")}
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            headers = answer.headers
    except urllib.error.HTTPError as exc:
        with exc:
            headers = exc.headers
    return {name.lower(): value for name, value in headers.items() if name.lower() in names}


@pytest.mark.timeout(60)
def test_serve_waiting_for_the_migration_answers_with_the_apps_security_headers(
    tmp_path: Path,
) -> None:
    """Given serve started with `--wait-for-schema` on an empty database (its public port
    answered by the small server that stands in for the app meanwhile),
    When its probes and any other path are asked for, while it waits and once it runs,
    Then every answer carries the same security headers as the app's own: never sniffed,
    cached, framed, nor named in a referrer.
    """
    database = tmp_path / "plangate.db"
    database.touch()
    fleet = Fleet("memory://", f"sqlite:///{database}", tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    paths = ("/healthz", "/readyz", "/elsewhere")
    try:
        fleet.serve(int(url.rpartition(":")[2]), "--wait-for-schema", "30")
        eventually(lambda: answers(f"{url}/readyz") == 503, 30, "serve waiting")
        waiting = {path: security_headers_of(f"{url}{path}") for path in paths}
        upgrade = fleet.plangate("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        eventually(lambda: answers(f"{url}/readyz") == 200, 30, "serve ready")
        running = {path: security_headers_of(f"{url}{path}") for path in paths}
    finally:
        fleet.stop_all()

    expected = {
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "x-frame-options": "DENY",
        "cache-control": "no-store",
    }
    assert running == {path: expected for path in paths}, fleet.logs()
    assert waiting == running


def started(tmp_path: Path, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run a worker or serve on the data folder's store to its end, as a person would."""
    args = ("worker", "gate") if command == "worker" else ("serve", "--port", str(free_port()))
    return plangate_in(tmp_path, *args, *options, PLANGATE_BROKER_URL="memory://")


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_schema_a_newer_plangate_migrated_is_refused_at_once_even_when_waiting(
    tmp_path: Path, command: str
) -> None:
    """Given a store a newer plangate migrated past this one's newest revision,
    When a worker or serve starts with `--wait-for-schema 30`,
    Then it exits 2 at once with the one line saying so: no migration of this plangate will
    ever bring that schema back to it, so there is nothing to wait for.
    """
    open_store(Settings(data_dir=tmp_path).resolved_database_url()).close()
    with sqlite3.connect(tmp_path / "plangate.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))

    began = time.monotonic()
    result = started(tmp_path, command, "--wait-for-schema", "30")
    took = time.monotonic() - began

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: the database schema is at {NEWER}, newer than this plangate knows"
    )
    assert "waiting" not in result.stderr
    assert took < 20, took


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_without_the_option_a_schema_behind_is_refused_at_once_in_one_line(
    tmp_path: Path, command: str
) -> None:
    """Given an empty database, When a worker or serve starts without `--wait-for-schema`
    (a person at a terminal), Then it exits 2 at once, saying in one line what to run."""
    (tmp_path / "plangate.db").touch()

    result = started(tmp_path, command)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [f"error: {EMPTY}"]


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_migration_that_does_not_come_in_time_is_one_error_naming_the_job(
    tmp_path: Path, command: str
) -> None:
    """Given an empty database nothing migrates, When a worker or serve waits for it up to
    1 s, Then after waiting it exits 2, saying what it waited for and where to see why."""
    (tmp_path / "plangate.db").touch()

    result = started(tmp_path, command, "--wait-for-schema", "1")

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {EMPTY}; waited 1 s (--wait-for-schema) and it did not run: see why (on "
        "Kubernetes, `kubectl logs job/plangate-db-upgrade`)"
    )


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_sigterm_while_waiting_for_the_migration_is_a_clean_stop(
    tmp_path: Path, command: str
) -> None:
    """Given a worker or serve waiting up to 60 s for the migration of an empty database,
    When it is sent SIGTERM (a rollout, a scale down), Then it exits 0 promptly."""
    database = tmp_path / "plangate.db"
    database.touch()
    fleet = Fleet("memory://", f"sqlite:///{database}", tmp_path)
    port = free_port()
    waiting = ("--wait-for-schema", "60")
    try:
        if command == "worker":
            process = fleet.start("gate", *waiting, PLANGATE_METRICS_PORT=str(port))
        else:
            process = fleet.serve(port, *waiting)
        eventually(lambda: answers(f"http://127.0.0.1:{port}/readyz") == 503, 30, "waiting")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        fleet.stop_all()

    assert code == 0, fleet.logs()
