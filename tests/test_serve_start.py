"""What `plangate serve` says as it starts: doors a deployment left open without a word."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.reviewers import Reviewer
from tests.fleet import Fleet
from tests.servers import free_port
from tests.support import answers, eventually, write_reviewers

pytestmark = pytest.mark.redis


def started_and_stopped(fleet: Fleet, *args: str, **env: str) -> list[str]:
    """Start `plangate serve ARGS`, wait until it answers, stop it; return its log's messages."""
    port = free_port()
    serve = fleet.serve(port, *args, **env)
    log = fleet.folder / f"serve-{len(fleet.processes) - 1}.log"
    try:
        eventually(lambda: answers(f"http://127.0.0.1:{port}/healthz") == 200, timeout=30)
    finally:
        serve.terminate()
        serve.wait(timeout=20)
        fleet.log_files[-1].flush()
    return [json.loads(line)["message"] for line in log.read_text().splitlines()]


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path)
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()  # closes the logs


def test_serve_on_every_address_with_no_intake_token_and_no_reviewers_says_so(
    fleet: Fleet,
) -> None:
    """Given serve started on 0.0.0.0 (as in a container) with no PLANGATE_INTAKE_TOKEN (a
    secret's optional key left out) and no reviewer,
    When it starts,
    Then it warns that goal intake is open to anyone who reaches it, and that no held plan can
    be decided there: both went unsaid, and /readyz answered 200.
    """
    said = started_and_stopped(fleet, "--host", "0.0.0.0")

    [open_intake] = [line for line in said if line.startswith("goal intake is open")]
    assert "PLANGATE_INTAKE_TOKEN is not set" in open_intake
    [no_reviewer] = [line for line in said if line.startswith("no reviewer")]
    assert no_reviewer.startswith("no reviewer file is set (PLANGATE_REVIEWERS_FILE): ")
    assert "plangate reviewers add" in no_reviewer


def test_serve_with_its_token_and_reviewers_or_on_loopback_warns_of_nothing_open(
    fleet: Fleet,
) -> None:
    """Given serve with an intake token and a reviewer on 0.0.0.0, and serve on 127.0.0.1 with
    a reviewer but no token (a person trying it on their machine), Then neither warns."""
    team = write_reviewers(
        fleet.folder / "reviewers.yaml", [Reviewer.with_token("alice", "t" * 32)]
    )
    guarded = started_and_stopped(
        fleet,
        "--host",
        "0.0.0.0",
        PLANGATE_INTAKE_TOKEN="i" * 32,
        PLANGATE_REVIEWERS_FILE=str(team),
    )
    local = started_and_stopped(fleet, PLANGATE_REVIEWERS_FILE=str(team))

    for said in (guarded, local):
        assert not [
            line for line in said if line.startswith(("goal intake is open", "no reviewer"))
        ]


def test_serve_says_where_it_listens_and_where_reviewers_go(fleet: Fleet) -> None:
    """Given serve started on a port of its own,
    When it starts,
    Then its log says the address it serves on, and the paths of the review page, intake and
    API docs: uvicorn, handed the bound socket, said nothing of where it listened.
    """
    said = started_and_stopped(fleet, "--host", "127.0.0.1")

    [serving] = [line for line in said if line.startswith("serving on http://127.0.0.1:")]
    assert "reviews at /reviews, goals at /api/v1/goals" in serving
    # On a port of its own, with PLANGATE_PUBLIC_URL unset: its links name another port.
    [public] = [line for line in said if line.startswith("PLANGATE_PUBLIC_URL is not set")]
    assert "http://127.0.0.1:8080, not this port" in public
