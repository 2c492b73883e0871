"""A database restart while a write's result is in hand: recorded once it answers, never re-run.

The executor held the result of a write it had called only in memory. When the database went
away just then, the handler failed and its message was retried: the retry found the step
claimed by this very executor, waited out the claim's lease (five minutes by default), then
called an idempotent write again, or asked a person whether a non-idempotent one had happened.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import refusing_connections
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]

APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: test}\n'
PLAYBOOK = """\
playbooks:
  - name: write-last
    pattern: "write last"
    steps:
      - {id: count, tool: ticket_count}
      - {id: write, tool: gated_write, args: {message: last}, after: [count]}
  - name: write-first
    pattern: "write first"
    steps:
      - {id: write, tool: gated_write, args: {message: first}}
      - {id: count, tool: ticket_count, after: [write]}
"""
ROOT = Path(__file__).resolve().parent.parent
LEASE = 40  # seconds: the retry of old waited this out; the test ends long before


@pytest.mark.parametrize("where", ["last", "first"])
def test_a_write_whose_result_meets_a_database_restart_is_recorded_once_it_answers(
    tmp_path: Path, redis_url: str, postgres_database_url: str, where: str
) -> None:
    """Given a fleet on PostgreSQL running a plan whose non-idempotent write is under way,
    When the database refuses every connection (its sessions ended, as in a restart) just as
    the write returns, and answers again once the executor says it waits for it,
    Then the goal completes well within the claim's lease, the write called exactly once,
    whether its result was to be recorded at the run's end (the last step) or on its own;
    and the executor's log says the outage as it begins and as it ends, with none of
    stamina's own lines (one a try, each quoting the driver's error).
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    (tmp_path / "playbook.yaml").write_text(PLAYBOOK)
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    fleet = Fleet(
        redis_url,
        postgres_database_url,
        tmp_path,
        extra_env={
            **FAST_SWEEPS,
            "PLANGATE_STEP_LEASE_SECONDS": str(LEASE),
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(tmp_path / "playbook.yaml"),
            "PLANGATE_TOOLS": "plangate.demo.tools,tests.gated_write_tools",
            "PLANGATE_TEST_GATE_DIR": str(gate_dir),
            "PYTHONPATH": str(ROOT),
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start_all()
    try:
        submitted = fleet.plangate("submit", f"write {where}", "--json")
        assert submitted.returncode == 0, submitted.stderr
        goal_id = json.loads(submitted.stdout)["goal_id"]
        calls = gate_dir / "calls"
        eventually(calls.exists, timeout=30, what="the write called")

        executor_log = tmp_path / "executor-2.log"
        with refusing_connections(postgres_database_url):
            (gate_dir / "release").touch()  # the write returns while nothing answers
            eventually(
                lambda: "again once it answers" in executor_log.read_text(),
                timeout=20,
                what="the executor waiting for the database with the result in hand",
            )
        started = time.monotonic()

        def ended() -> str | None:
            shown = fleet.plangate("status", goal_id, "--json")
            status = json.loads(shown.stdout)["status"] if shown.returncode == 0 else None
            return status if status in ("completed", "failed", "needs_attention") else None

        status = eventually(ended, timeout=LEASE - 5, what="the goal's end")
        assert status == "completed", fleet.logs()
        assert time.monotonic() - started < LEASE - 5
        assert calls.read_text().splitlines() == [where]
    finally:
        codes = fleet.stop_all()
    assert all(code == 0 for code in codes), fleet.logs()
    said = [json.loads(line) for line in executor_log.read_text().splitlines() if line[:1] == "{"]
    assert [r for r in said if r["logger"] == "stamina"] == []
    outage = [r["message"] for r in said if r["logger"] == "plangate.store.outages"]
    assert len(outage) == 2, outage
    assert "does not answer" in outage[0]
    assert "answers again, after" in outage[1]
