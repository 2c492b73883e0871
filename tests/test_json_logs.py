"""Workers log JSON lines: UTC times in milliseconds, and the goal and trace of each line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plangate.client import Client
from plangate.logs import JsonFormatter
from plangate.store import GoalRow, open_store
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import free_port
from tests.test_distributed import APPROVE_ALL

pytestmark = pytest.mark.redis

UTC_MILLISECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"), **FAST_SWEEPS},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()


def trace_of(fleet: Fleet, goal_id: str) -> str:
    store = open_store(fleet.database_url, upgrade=False)
    try:
        with store.session() as session:
            traceparent = session.get_one(GoalRow, goal_id).trace_headers["traceparent"]
    finally:
        store.close()
    return str(traceparent).split("-")[1]


def test_every_line_of_a_distributed_seed_run_is_json_with_its_goal_and_trace(
    fleet: Fleet,
) -> None:
    """Given a planner, a gate and an executor as processes on Redis,
    When the seed goal runs to the end and the workers stop,
    Then every line they logged is a JSON object with a UTC millisecond time, a level and a
    stage; each of the goal's moves is one line; and every line about the goal carries its
    goal_id and its trace's id.
    """
    fleet.start_all()
    with Client(fleet.settings()) as client:
        goal_id = client.submit(SEED_GOAL).goal_id
        deadline = time.monotonic() + 40
        while client.status(goal_id).status != "completed":
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.1)
    assert fleet.stop_all() == [0, 0, 0]
    trace_id = trace_of(fleet, goal_id)

    lines = [
        line for log in sorted(fleet.folder.glob("*.log")) for line in log.read_text().splitlines()
    ]
    entries = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert entries
    for entry in entries:
        assert UTC_MILLISECONDS.match(entry["time"]), entry
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry
        assert entry["stage"] in {"planner", "gate", "executor"}, entry
    about_the_goal = [e for e in entries if goal_id in json.dumps(e)]
    assert about_the_goal
    for entry in about_the_goal:
        assert entry.get("goal_id") == goal_id, entry
        assert entry.get("trace_id") == trace_id, entry
    moves = [
        (e["from"], e["to"]) for e in sorted(about_the_goal, key=lambda e: e["time"]) if "to" in e
    ]
    assert moves == [
        ("submitted", "proposed"),
        ("proposed", "approved"),
        ("approved", "running"),
        ("running", "completed"),
    ], moves


def test_serve_logs_json_lines_too(fleet: Fleet) -> None:
    """Given `plangate serve` started as a deployment starts it,
    When it answers probes, a scrape and a request, and stops,
    Then its own lines and uvicorn's (startup, access, shutdown) are JSON lines of stage serve,
    and the request is in the access log but the probes and the scrape answered are not (an
    on-call found 92 of serve's 137 lines to be `GET /metrics`).
    """
    port = free_port()
    log = fleet.folder / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "plangate", "serve", "--port", str(port)],
            env=fleet.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert serve.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/goals").status_code == 401
        finally:
            serve.terminate()
            serve.wait(timeout=20)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert any('"GET /api/v1/goals HTTP' in message for message in messages), messages
    assert not any('"GET /metrics HTTP' in message for message in messages), messages
    assert not any('"GET /healthz HTTP' in message for message in messages), messages
    for entry in entries:
        assert UTC_MILLISECONDS.match(entry["time"]), entry
        assert entry["stage"] == "serve", entry
        # uvicorn's terminal copy of its message, with ANSI colour codes, is not a field.
        assert "color_message" not in entry, entry


def test_a_log_line_shows_bidi_and_invisible_characters_as_json_escapes() -> None:
    """Given a message holding a right-to-left override, a zero-width space and a C1 control
    (a reviewer's reason, a goal's text),
    When it is formatted as a JSON log line,
    Then the line holds their escapes, not the characters a terminal or log viewer obeys, and
    decodes to the same message.
    """
    said = "cancelled: EVIL\u202eEMCA\u200b\x85 done"
    record = logging.LogRecord("plangate.test", logging.INFO, __file__, 1, "%s", (said,), None)

    line = JsonFormatter().format(record)

    assert all(escape in line for escape in ("\\u202e", "\\u200b", "\\u0085"))
    assert not any(c in line for c in "\u202e\u200b\x85")
    assert json.loads(line)["message"] == said
