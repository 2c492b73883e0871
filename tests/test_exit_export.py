"""A worker's end does not wait for a collector that is down or hangs.

With the collector down, a worker took 12-16 s to exit at SIGTERM: the SDK's exit hook waited
for the exporter's 10 s of retries, or for a hung collector's answer, eating into the grace an
orchestrator gives before it kills. Its last spans get a second; then they are dropped, and
the log says so.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Fleet
from tests.servers import free_port
from tests.support import eventually

pytestmark = pytest.mark.redis


@pytest.fixture
def hung_collector() -> Iterator[str]:
    """An address that takes connections and never answers, as a hung collector does."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)  # the kernel completes connections; nothing reads them
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"


@pytest.mark.parametrize("collector", ["down", "hung"])
def test_a_worker_exits_at_sigterm_without_waiting_for_its_collector(
    collector: str, request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> None:
    """Given a planner worker that has traced a goal, its collector down or hanging,
    When it is sent SIGTERM,
    Then it exits 0 within a few seconds, not after the exporter's 10 s timeout, and its log
    says the last spans were dropped, naming the collector and the variable to check.
    """
    endpoint = (
        request.getfixturevalue("hung_collector")
        if collector == "hung"
        else f"http://127.0.0.1:{free_port()}"
    )
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path)
    assert fleet.plangate("db", "upgrade").returncode == 0
    planner = fleet.start("planner", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    try:
        submitted = fleet.plangate("submit", "restart the api")
        assert submitted.returncode == 0, submitted.stderr
        # No executor has offered its tools: the planner traces the goal and hands it back.
        eventually(lambda: "no executor has published its tools" in fleet.logs(), timeout=20)

        planner.send_signal(signal.SIGTERM)
        try:
            code = planner.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker was still exiting 5 s after SIGTERM\n{fleet.logs()}")
    finally:
        fleet.stop_all()

    assert code == 0, fleet.logs()
    logs = fleet.logs()
    assert (
        f"the last spans of this process were not exported: the collector at {endpoint} "
        "(OTEL_EXPORTER_OTLP_ENDPOINT) did not take them within 1 s of its end"
    ) in logs
    assert "check the collector, or OTEL_EXPORTER_OTLP_ENDPOINT" in logs
