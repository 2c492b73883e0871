"""A database that stops answering under running workers: said in one line, and outlived."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import refusing_connections
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_worker_whose_database_stops_answering_says_so_in_one_line_and_runs_on(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a gate worker on PostgreSQL sweeping every half second,
    When its database refuses every connection for a while,
    Then each sweep is skipped saying the store does not answer and what to check, with no
    traceback (it logged the whole traceback, with the SQL, every sweep), and the worker runs
    on, ready again once the database answers.
    """
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    worker = fleet.start("gate")
    log = tmp_path / "gate-0.log"
    try:
        eventually(lambda: "consuming" in log.read_text(), timeout=30, what="the gate consuming")
        with refusing_connections(postgres_database_url):
            said = "sweep skipped: the store does not answer"
            eventually(lambda: said in log.read_text(), timeout=30, what="a sweep skipped")
        assert worker.poll() is None, fleet.logs()
        assert "check PLANGATE_DATABASE_URL" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        codes = fleet.stop_all()
    assert codes == [0], fleet.logs()
